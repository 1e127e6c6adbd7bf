/* Ingress dispatcher: which filter-table chain an IPv4 packet meets.
 *
 * Used only when FORWARD has work to do; otherwise the INPUT program is
 * attached directly. The kernel's own route lookup (bpf_fib_lookup)
 * decides, as ip_route_input() would: a packet the namespace forwards
 * goes to the FORWARD classifier (chain_map[1]), a packet to a local,
 * broadcast or multicast address to the INPUT classifier (chain_map[0]).
 * Packets the kernel drops or answers before any chain sees them
 * (forwarding disabled, no route, TTL <= 1, too big to forward without
 * fragmenting) are passed unclassified: the stack deals with them.
 * An empty slot (no FORWARD program) falls through: XDP_PASS. */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>

#define AF_INET 2

BPF_PROG_ARRAY(chain_map, 2);

int xdp_dispatch(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return XDP_PASS;
	struct bpf_fib_lookup p = {};
	p.family = AF_INET;
	p.tos = ip->tos;
	p.l4_protocol = ip->protocol;
	p.tot_len = bpf_ntohs(ip->tot_len);
	p.ipv4_src = ip->saddr;
	p.ipv4_dst = ip->daddr;
	p.ifindex = ctx->ingress_ifindex;
	int rc = bpf_fib_lookup(ctx, &p, sizeof(p), 0);
	if (rc == BPF_FIB_LKUP_RET_NOT_FWDED) {
		chain_map.call(ctx, 0);
		return XDP_PASS;
	}
	if ((rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH) && ip->ttl > 1)
		chain_map.call(ctx, 1);
	return XDP_PASS;
}
