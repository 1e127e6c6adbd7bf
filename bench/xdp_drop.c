/* The ceiling of the live benchmark: an XDP program that only parses the
 * Ethernet and IPv4 headers and drops. One per-CPU counter, so the bench
 * can check counted == sent like for the other systems (bpf-iptables'
 * classifier counts too). Loaded by bench/xdpdrop.py with bcc. */
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>

BPF_PERCPU_ARRAY(dropped, u64, 1);

int xdp_drop(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = data + sizeof(*eth);
    u32 key = 0;
    u64 *count;

    if ((void *)(ip + 1) > end || eth->h_proto != htons(ETH_P_IP) || ip->ihl < 5)
        return XDP_PASS;
    count = dropped.lookup(&key);
    if (count)
        (*count)++;
    return XDP_DROP;
}
