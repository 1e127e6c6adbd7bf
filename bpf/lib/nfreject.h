/* --mode netfilter's REJECT hand-off (README, "Netfilter hooks"): a
 * netfilter program can neither send nor change a packet, so the
 * classifier, deciding REJECT, records the skb by its address and accepts
 * it; right after it, at the same hook (links at priority -1, the filter
 * table at 0), iptables-legacy's rule `-m bpf --object-pinned
 * .../sf_<type> -j REJECT --reject-with <type>` finds the record
 * (bpf/nfreject.c) and the kernel's own ipt_REJECT replies and drops.
 * The record holds the packet's destination, IP id and length besides
 * the verdict: an skb dropped between the two leaves its entry behind and
 * its address may be reused; the fingerprint must match too. */
#ifndef BPF_IPTABLES_NFREJECT_H
#define BPF_IPTABLES_NFREJECT_H

struct nf_pending {
	u32 daddr;	/* network order */
	u16 id;		/* host order */
	u16 tot_len;	/* host order */
	u32 verdict;	/* VERDICT_REJECT | type | ... (the type: low 8 bits) */
	u32 pad;
};
#define NF_PENDING_MAX 4096

#endif
