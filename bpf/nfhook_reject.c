/* REJECT hand-off prototype for a netfilter-hook data path (README,
 * "Netfilter hooks", REJECT option 1).
 *
 * A BPF_PROG_TYPE_NETFILTER program can neither send nor change a packet.
 * At LOCAL_OUT (and FORWARD) the same skb reaches TC egress afterwards,
 * where a program can (lib/reject.h turns it into the reply today). So the
 * netfilter program, deciding "REJECT", accepts the packet and records it
 * by its sk_buff address; the TC egress program finds the address again
 * (bpf_cast_to_kern_ctx: the __sk_buff context as the kernel's sk_buff)
 * and acts on it. A recorded skb that never reaches TC egress (dropped on
 * the way) leaves an entry behind whose address a later skb may reuse:
 * the entry also holds the packet's destination, IP id and length, which
 * must match too. The TC program then builds the reply with the TC
 * data path's own code (lib/reject.h, as filter.c's xdp_reject does for
 * OUTPUT) and turns it into the stack at the device's ingress. Here TCP
 * gets tcp-reset and UDP icmp-port-unreachable. Fake helper ids become
 * kfunc calls (nfhook.py). */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#define HOOK_TC 1
#define CTX_TYPE struct __sk_buff
#define RET(v) ((v) == XDP_PASS ? TC_ACT_OK : TC_ACT_SHOT)
#include "lib/parse.h"
#include "lib/reject.h"

#define NF_ACCEPT 1
#define PROTO_TCP 6
#define PROTO_UDP 17
#define DEFAULT_TTL 64

struct nf_ctx {
	void *state;
	void *skb;
};

struct pending {
	u32 daddr;
	u16 id;
	u16 tot_len;
	u32 verdict;       /* VERDICT_REJECT | type | REJECT_OUTPUT | TTL << 16 */
	u32 _pad;
};

BPF_TABLE("lru_hash", u64, struct pending, pending, 4096);
/* slot 0: recorded at LOCAL_OUT; 1: found at TC egress */
BPF_ARRAY(stats, u64, 2);
/* slot 0: the TCP destination port to "reject" (0: none) */
BPF_ARRAY(reject_port, u32, 1);

static void *(*kf_dynptr_slice)(void *p, u32 off, void *buf, u32 len) = (void *)KFUNC_SLICE;
static long (*kf_dynptr_from_skb)(void *skb, u64 flags, void *p) = (void *)KFUNC_FROM_SKB;
static void *(*kf_cast_to_kern_ctx)(void *ctx) = (void *)KFUNC_CAST_TO_KERN_CTX;

struct dynptr { u64 a; u64 b; } __attribute__((aligned(8)));

static __always_inline void bump(u32 slot)
{
	u64 *n = stats.lookup(&slot);
	if (n)
		__sync_fetch_and_add(n, 1);
}

int nf_reject_out(struct nf_ctx *ctx)
{
	void *skb = ctx->skb;
	u32 zero = 0;
	u32 *port = reject_port.lookup(&zero);
	if (!port || !*port)
		return NF_ACCEPT;
	struct dynptr p;
	u8 buf[24];
	if (kf_dynptr_from_skb(skb, 0, &p))
		return NF_ACCEPT;
	u8 *ip = kf_dynptr_slice(&p, 0, buf, 24);   /* 20-byte header + ports */
	if (!ip || (ip[0] & 0xf) != 5 || (ip[9] != PROTO_TCP && ip[9] != PROTO_UDP))
		return NF_ACCEPT;
	if (((u32)ip[22] << 8 | ip[23]) != *port)
		return NF_ACCEPT;
	struct pending v = {};
	__builtin_memcpy(&v.daddr, ip + 16, 4);
	v.id = (u16)ip[4] << 8 | ip[5];
	v.tot_len = (u16)ip[2] << 8 | ip[3];
	v.verdict = VERDICT_REJECT | REJECT_OUTPUT | (DEFAULT_TTL << 16) |
		(ip[9] == PROTO_TCP ? IPT_TCP_RESET : IPT_ICMP_PORT_UNREACHABLE);
	u64 addr = (u64)skb;
	pending.update(&addr, &v);
	bump(0);
	return NF_ACCEPT;   /* the verdict is carried out at TC egress */
}

int tc_take_reject(struct __sk_buff *ctx)
{
	u64 addr = (u64)kf_cast_to_kern_ctx(ctx);
	struct pending *v = pending.lookup(&addr);
	if (!v)
		return TC_ACT_OK;
	u32 verdict = v->verdict;
	u32 daddr = v->daddr, id = v->id, tot_len = v->tot_len;
	pending.delete(&addr);
	u32 pull = ctx->len < 128 ? ctx->len : 128;
	bpf_skb_pull_data(ctx, pull);
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return TC_ACT_OK;
	if (ip->daddr != daddr || bpf_ntohs(ip->id) != id || bpf_ntohs(ip->tot_len) != tot_len)
		return TC_ACT_OK;   /* a stale entry: another skb at that address */
	bump(1);
	return reject_packet(ctx, verdict, ctx->len);
}

/* REJECT option 3 (INPUT, where nothing of ours runs after LOCAL_IN): the
 * same record, made at LOCAL_IN before the filter table (priority -1), is
 * found by this socket filter, which iptables-legacy runs as a match
 * (`-m bpf --object-pinned P -j REJECT`, priority 0): the kernel's own
 * ipt_REJECT sends the reply. xt_bpf runs it with skb->data at the IP
 * header; non-zero: the rule matches. */
int sf_take_reject(struct __sk_buff *ctx)
{
	u64 addr = (u64)kf_cast_to_kern_ctx(ctx);
	struct pending *v = pending.lookup(&addr);
	if (!v)
		return 0;
	u32 daddr = v->daddr, id = v->id, tot_len = v->tot_len;
	pending.delete(&addr);
	u8 ip[20];
	if (bpf_skb_load_bytes(ctx, 0, ip, 20))
		return 0;
	u32 d;
	__builtin_memcpy(&d, ip + 16, 4);
	if (d != daddr || ((u32)ip[4] << 8 | ip[5]) != id || ((u32)ip[2] << 8 | ip[3]) != tot_len)
		return 0;
	bump(1);
	return 1;
}
