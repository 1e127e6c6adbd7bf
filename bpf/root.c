/* Root programs: attached once per interface for the namespace's lifetime.
 *
 * Updates never touch an interface: they fill the programs of the
 * inactive generation (prog array slots), then flip one word in
 * active_map. Every root reads that word once per packet and tail-calls
 * the classifier of the active generation and hook, so one map write
 * switches every interface and hook at once, and a packet sees one
 * generation only (the word is read before the tail call).
 *
 * Word: bit 0 the active generation (0/1); bit 1 "route": ask the
 * kernel's route lookup whether an ingress packet is for this host
 * (INPUT) or forwarded (FORWARD), set when that generation has a FORWARD
 * program or the namespace forwards. Without it every ingress IPv4 packet
 * goes to INPUT (no lookup cost).
 *
 * Slots: generation * 3 + hook (0 INPUT, 1 FORWARD, 2 OUTPUT). An XDP prog
 * array holds XDP programs only, so the XDP root has its own array; the
 * TC roots (ingress in --mode tc, egress always) share tc_slots. An empty
 * slot fails the tail call: the packet passes unclassified (a hook without
 * rules and with policy ACCEPT).
 *
 * The root is one of the kernel's 33 tail calls per packet; the
 * classifier's own continuations use the rest (compiler.MAX_CHUNKS). */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>
#include <uapi/linux/pkt_cls.h>
#include "lib/loopback.h"

#define AF_INET 2
#define ACTIVE_GEN 1u
#define ACTIVE_ROUTE 2u
#define HOOK_INPUT 0
#define HOOK_FORWARD 1
#define HOOK_OUTPUT 2

BPF_ARRAY(active_map, u32, 1);
BPF_PROG_ARRAY(xdp_slots, 6);
BPF_PROG_ARRAY(tc_slots, 6);

static __always_inline u32 active_word(void)
{
	u32 zero = 0;
	u32 *w = active_map.lookup(&zero);
	return w ? *(volatile u32 *)w : 0;
}

/* Tail calls with a constant key. The JIT turns a tail call whose key is
 * the same constant on every path to it into a direct jump (patched when
 * the slot changes); a key computed at run time makes it an indirect
 * jump, which is a retpoline on kernels mitigating Spectre v2 that way
 * (this machine's: ~20 ns of a ~100 ns packet at live rates, measured).
 * So one call site per slot, written out (bcc does not rewrite map calls
 * that a macro expands to), each followed by an empty asm naming its slot:
 * without it clang merges the call sites into one whose key is a phi of
 * the constants, and the verifier then sees a variable key. Inlined with
 * a constant hook, the other hooks' sites fold away. */
static __always_inline void xdp_call(struct xdp_md *ctx, u32 word, int hook)
{
	if (word & ACTIVE_GEN) {
		if (hook == HOOK_INPUT) {
			xdp_slots.call(ctx, 3 + HOOK_INPUT);
			asm volatile("" ::"i"(3 + HOOK_INPUT));
		} else {
			xdp_slots.call(ctx, 3 + HOOK_FORWARD);
			asm volatile("" ::"i"(3 + HOOK_FORWARD));
		}
	} else {
		if (hook == HOOK_INPUT) {
			xdp_slots.call(ctx, HOOK_INPUT);
			asm volatile("" ::"i"(HOOK_INPUT));
		} else {
			xdp_slots.call(ctx, HOOK_FORWARD);
			asm volatile("" ::"i"(HOOK_FORWARD));
		}
	}
}

/* INPUT or FORWARD at TC ingress (hook: one of the two) */
static __always_inline void tc_call(struct __sk_buff *skb, u32 word, int hook)
{
	if (word & ACTIVE_GEN) {
		if (hook == HOOK_INPUT) {
			tc_slots.call(skb, 3 + HOOK_INPUT);
			asm volatile("" ::"i"(3 + HOOK_INPUT));
		} else {
			tc_slots.call(skb, 3 + HOOK_FORWARD);
			asm volatile("" ::"i"(3 + HOOK_FORWARD));
		}
	} else {
		if (hook == HOOK_INPUT) {
			tc_slots.call(skb, HOOK_INPUT);
			asm volatile("" ::"i"(HOOK_INPUT));
		} else {
			tc_slots.call(skb, HOOK_FORWARD);
			asm volatile("" ::"i"(HOOK_FORWARD));
		}
	}
}

/* Which ingress chain: HOOK_INPUT, HOOK_FORWARD, or -1 for a packet no
 * chain sees (the stack drops or answers it before the filter table:
 * forwarding disabled, no route, TTL <= 1, too big to forward), as
 * ip_route_input() would decide. Non-IPv4 goes to INPUT, which passes it. */
static __always_inline int ingress_hook(void *ctx, void *data, void *data_end, u32 ifindex)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return HOOK_INPUT;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return HOOK_INPUT;
	struct bpf_fib_lookup p = {};
	p.family = AF_INET;
	p.tos = ip->tos;
	p.l4_protocol = ip->protocol;
	/* no MTU check (tot_len 0): a GRO/GSO aggregate is longer than the
	 * MTU and is forwarded (segmented on output); the lookup would say
	 * FRAG_NEEDED and the packet would bypass FORWARD. (A real oversize
	 * DF packet, which ip_forward() drops before FORWARD, is classified
	 * by FORWARD instead.) */
	p.tot_len = 0;
	p.ipv4_src = ip->saddr;
	p.ipv4_dst = ip->daddr;
	p.ifindex = ifindex;
	int rc = bpf_fib_lookup(ctx, &p, sizeof(p), 0);
	/* FWD_DISABLED: the lookup stops before the route when the device does
	 * not forward, so it cannot tell local from foreign destinations; the
	 * kernel forwards nothing then, and a packet for this host goes to
	 * INPUT (one for another host, which the kernel drops, is classified
	 * by INPUT too: never a bypass of INPUT) */
	if (rc == BPF_FIB_LKUP_RET_NOT_FWDED || rc == BPF_FIB_LKUP_RET_FWD_DISABLED)
		return HOOK_INPUT;
	if ((rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH) && ip->ttl > 1)
		return HOOK_FORWARD;
	return -1;
}

/* -- looped copies (lib/loopback.h) ------------------------------------ */

/* A frame that starts like a bare IPv4 datagram (a looped copy, which only
 * generic XDP sees) is left to TC ingress, tagged in the metadata;
 * returns 1 when it is. Without metadata (a native driver that has none)
 * the frame is classified here: native XDP never sees looped copies. */
static __always_inline int xdp_leave_looped(struct xdp_md *ctx)
{
	u32 total = loop_shaped((void *)(long)ctx->data, (void *)(long)ctx->data_end);
	if (!total || total != bpf_xdp_get_buff_len(ctx))
		return 0;
	if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(u32)))
		return 0;
	u32 *meta = (void *)(long)ctx->data_meta;
	if ((void *)(meta + 1) > (void *)(long)ctx->data)
		return 0;
	*meta = LOOP_TAG;
	return 1;
}

/* A PACKET_LOOPBACK IPv4 packet through INPUT (the TC build of the
 * generation in ``word``), with a zeroed Ethernet header pushed so that the
 * classifier reads it as a frame (the kernel's TC ingress pulls it again
 * when the program returns). It is always INPUT's: a looped copy is
 * delivered locally by the route it was sent with. */
static __always_inline int tc_looped_input(struct __sk_buff *skb, u32 word)
{
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if (bpf_skb_change_head(skb, ETH_HLEN, 0))
		return TC_ACT_SHOT;	/* no memory: fail closed */
	u16 proto = bpf_htons(ETH_P_IP);
	if (bpf_skb_store_bytes(skb, 12, &proto, sizeof(proto), 0))
		return TC_ACT_SHOT;
	tc_call(skb, word, HOOK_INPUT);
	return TC_ACT_OK;	/* an empty slot (before the first switch): passes */
}

/* XDP modes: TC ingress next to the XDP root, for what XDP cannot
 * classify: looped copies (skb->pkt_type PACKET_LOOPBACK) and frames the
 * XDP root left here because they looked like one (LOOP_TAG). Everything
 * else passes at once. */
int tc_loop_root(struct __sk_buff *skb)
{
	u32 word;
	if (skb->pkt_type == PACKET_LOOPBACK_TYPE) {
		word = active_word();
		return tc_looped_input(skb, word);
	}
	u32 *meta = (void *)(long)skb->data_meta;
	void *data = (void *)(long)skb->data;
	if ((void *)(meta + 1) > data || *meta != LOOP_TAG)
		return TC_ACT_OK;
	/* a received Ethernet frame that XDP did not classify: INPUT here;
	 * this mode has no FORWARD classifier at TC, so one the host would
	 * forward is dropped (fail closed: only a frame built to look like a
	 * bare datagram gets here, see loop_shaped()) */
	word = active_word();
	int hook = HOOK_INPUT;
	if (word & ACTIVE_ROUTE)
		hook = ingress_hook(skb, data, (void *)(long)skb->data_end, skb->ifindex);
	if (hook == HOOK_FORWARD)
		return TC_ACT_SHOT;
	if (hook == HOOK_INPUT)
		tc_call(skb, word, HOOK_INPUT);
	return TC_ACT_OK;
}

int xdp_root(struct xdp_md *ctx)
{
	if (xdp_leave_looped(ctx))
		return XDP_PASS;
	u32 word = active_word();
	int hook = HOOK_INPUT;
	if (word & ACTIVE_ROUTE)
		hook = ingress_hook(ctx, (void *)(long)ctx->data, (void *)(long)ctx->data_end,
				    ctx->ingress_ifindex);
	if (hook >= 0)
		xdp_call(ctx, word, hook);
	return XDP_PASS;
}

/* --mode tc: INPUT and FORWARD at TC ingress (data starts at the MAC header) */
int tc_ingress_root(struct __sk_buff *skb)
{
	u32 word = active_word();
	if (skb->pkt_type == PACKET_LOOPBACK_TYPE)
		return tc_looped_input(skb, word);	/* no Ethernet header */
	int hook = HOOK_INPUT;
	if (word & ACTIVE_ROUTE)
		hook = ingress_hook(skb, (void *)(long)skb->data, (void *)(long)skb->data_end,
				    skb->ifindex);
	if (hook >= 0)
		tc_call(skb, word, hook);
	return TC_ACT_OK;
}

/* OUTPUT: locally generated packets only. A received packet carries the
 * device it came in on (skb->skb_iif, set in __netif_receive_skb_core());
 * a socket's packet has 0 there. So a packet leaving with an ingress
 * ifindex is being forwarded: FORWARD saw it at ingress, OUTPUT must not. */
int tc_egress_root(struct __sk_buff *skb)
{
	if (skb->ingress_ifindex != 0)
		return TC_ACT_OK;
	if (active_word() & ACTIVE_GEN) {
		tc_slots.call(skb, 3 + HOOK_OUTPUT);
		asm volatile("" ::"i"(3 + HOOK_OUTPUT));
	} else {
		tc_slots.call(skb, HOOK_OUTPUT);
		asm volatile("" ::"i"(HOOK_OUTPUT));
	}
	return TC_ACT_OK;
}
