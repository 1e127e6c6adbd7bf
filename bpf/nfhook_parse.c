/* The classifier's own packet parser (lib/parse.h, unchanged) run by a
 * netfilter-hook program: the feasibility of the "header window" of a
 * `--mode netfilter` classifier (README, "Netfilter hooks").
 *
 * lib/parse.h reads an Ethernet frame between data and data_end. At a
 * netfilter hook there is no direct packet access: the program copies the
 * first WINDOW bytes of the IP packet (bpf_dynptr_read: fewer when the
 * packet is shorter) behind a made-up Ethernet header in a zeroed stack
 * buffer, and passes frame .. frame + 14 + copied as data .. data_end.
 * The parser's bounds checks then compare stack pointers, and its reads
 * (at variable offsets: IP options) stay inside the buffer, which the
 * verifier accepts for a privileged program (stack accesses must be
 * aligned: the frame starts 2 bytes into the buffer). A classifier would
 * put the real MACs (skb->head + skb->mac_header) into the made-up header
 * for -m mac and pkttype. The fields go to a map for the test to compare
 * with what the packet holds. */
#include <uapi/linux/bpf.h>

#include "lib/parse.h"

#define NF_ACCEPT 1
#ifndef WINDOW
#define WINDOW 120   /* IP header with options (60) + TCP header with options (60) */
#endif

struct nf_ctx {
	void *state;
	void *skb;
};

static long (*kf_dynptr_from_skb)(void *skb, u64 flags, struct bpf_dynptr *p) =
	(void *)KFUNC_FROM_SKB;

struct parsed {
	u32 rc;
	struct packet_fields f;
};

BPF_ARRAY(out, struct parsed, 1);

int nf_parse(struct nf_ctx *ctx)
{
	void *skb = ctx->skb;
	u32 zero = 0;
	struct parsed *o = out.lookup(&zero);
	if (!o)
		return NF_ACCEPT;
	/* the frame starts 2 bytes in, so that the IP header is 4-byte
	 * aligned: the verifier wants aligned stack accesses, always */
	u8 buf[2 + 14 + WINDOW + 60] __attribute__((aligned(8))) = {};
	u8 *frame = buf + 2;
	frame[12] = 0x08;                /* h_proto ETH_P_IP; MACs zero (PACKET_HOST) */
	struct bpf_dynptr p;
	if (kf_dynptr_from_skb(skb, 0, &p))
		return NF_ACCEPT;
	u32 len = *(u32 *)((char *)skb + OFF_SKB_LEN);
	u32 n = len < WINDOW ? len : WINDOW;
	if (bpf_dynptr_read(frame + 14, n, &p, 0, 0))
		return NF_ACCEPT;
	o->rc = parse_packet(frame, frame + 14 + n, &o->f, 14 + len);
	return NF_ACCEPT;
}
