/* -m set in the data path: ipset membership (bpf_iptables/ipset/match.py
 * is the same logic in Python, and says where it comes from in the
 * kernel: ip_set_get_ip4_port() and the set types' kadt functions).
 *
 * The namespace's sets live in four maps, one per set type, keyed by the
 * set's id (bpf_iptables/ipset/maps.py writes them; filter.c declares them
 * and gives the accessors below, since bcc rewrites map calls in that file
 * only).
 *
 * The distinct (set, directions) pairs of the chain are looked up once per
 * packet, before the scan, into a bit mask (bit k-1: check k of
 * set_check_map holds); a candidate's set matches are then one masked
 * compare (struct set_want: the bits it needs, and the value they must
 * have, 0 for "! --match-set"), as cheap for the verifier as the residual
 * address checks. (Lookups per candidate inside the scan loop multiplied
 * the verifier's states by every lookup's outcomes: a one-field chain no
 * longer verified at any step count.) Set lookups have no side effect, so
 * looking them up before the rule is reached decides the same. */
#ifndef BPF_IPTABLES_SET_H
#define BPF_IPTABLES_SET_H

#define SET_TYPE_IP 1		/* hash:ip */
#define SET_TYPE_NET 2		/* hash:net */
#define SET_TYPE_IPPORT 3	/* hash:ip,port */
#define SET_TYPE_BITMAP 4	/* bitmap:port */

#define SET_SRC0 1		/* dimension 1 is the source (address or port) */
#define SET_SRC1 2		/* dimension 2 (the port of hash:ip,port) is the source */
#define SET_DIMS 8		/* the rule gives as many directions as the set has
				 * dimensions (else ip_set_test() says no) */
#define SET_RETURN_NOMATCH 16	/* --return-nomatch: hash:net's nomatch elements
				 * are the ones that match */

#define SET_BITMAP_WORDS 1024	/* 65,536 bits per bitmap:port set */
#define SET_NET_RETRIES 4	/* hash:net: expired prefixes passed over per lookup */

/* set_check_map slot k (from 1): a distinct check; slot 0: their number in id */
struct set_check {
	u32 type;
	u32 id;
	u32 flags;
	u32 pad;
};

/* entry_set_map: per entry, the checks it needs and the outcome wanted */
struct set_want {
	u64 mask;
	u64 want;
};

struct set_ip_key {
	u32 id;
	u32 addr;		/* network byte order */
};

struct set_net_key {
	u32 prefixlen;		/* 32 (the id) + the prefix length */
	u32 id;			/* network byte order: part of the prefix */
	u32 addr;
};

struct set_ipport_key {
	u32 id;
	u32 addr;
	u8 proto;
	u8 pad;
	u16 port;		/* host byte order */
};

struct set_val {
	u64 expires;		/* CLOCK_MONOTONIC ns (bpf_ktime_get_ns), 0: never */
	u32 nomatch;		/* hash:net "nomatch": found means not in the set */
	u32 cidr;
};

/* What of the packet the sets look at, computed once per packet. */
struct set_packet {
	u32 saddr, daddr;	/* network byte order */
	u32 proto;
	u32 ports_ok;		/* ip_set_get_ip4_port() succeeds */
	u32 sport, dport;	/* ports, ICMP type << 8 | code, or 0 */
	/* parse.h's, copied: decisions are taken on these copies */
	u32 fragment, l4, icmp, length, psport, pdport;
};

/* Everything the per-packet lookups write lives in this map value, none of
 * it on the stack: keys built on the stack (a different one per set type)
 * left the stack different on every path, and the scan loop after the
 * lookups was verified once per path (7x the verifier's work per step). */
struct set_scratch {
	u64 bits;		/* bit k - 1: check k of set_check_map holds */
	struct set_packet sp;
	u32 slot;		/* set_check_map key */
	u8 raw[8];		/* bytes read by helper */
	struct set_ip_key ip;
	struct set_net_key net;
	struct set_ipport_key ipport;
	u32 word;		/* set_port key */
};

/* A load from map memory the compiler cannot forward from the store before
 * it: the verifier then knows nothing of the value, and a branch on it
 * refines no copy of it on the stack (branching on the packet_fields
 * themselves left one verifier state per protocol path, and the scan loop
 * after this was verified once for each). */
#define SET_READ(x) (*(volatile typeof(x) *)&(x))

/* in filter.c's set_result (map memory) */
static __always_inline void set_packet_of(CTX_TYPE *ctx, struct packet_fields *pf,
					  struct set_scratch *sc)
{
	struct set_packet *sp = &sc->sp;
	sp->saddr = pf->saddr;
	sp->daddr = pf->daddr;
	sp->proto = pf->proto;
	sp->fragment = pf->fragment;
	sp->l4 = pf->l4;
	sp->icmp = pf->icmp;
	sp->length = pf->length;
	sp->psport = pf->sport;
	sp->pdport = pf->dport;
	sp->ports_ok = 0;
	sp->sport = 0;
	sp->dport = 0;
	u32 p = SET_READ(sp->proto);
	int with_ports = p == IPPROTO_TCP || p == IPPROTO_UDP || p == IPPROTO_SCTP ||
			 p == IPPROTO_UDPLITE || p == IPPROTO_ICMP;
	if (p == 0)
		return;
	if (SET_READ(sp->fragment)) {
		/* no port for a non-first fragment of a protocol with ports;
		 * others match with port 0 */
		sp->ports_ok = !with_ports;
		return;
	}
	if (p == IPPROTO_TCP || p == IPPROTO_UDP) {
		sp->ports_ok = SET_READ(sp->l4);
		sp->sport = SET_READ(sp->psport);
		sp->dport = SET_READ(sp->pdport);
	} else if (p == IPPROTO_ICMP) {
		u32 icmp = SET_READ(sp->icmp);
		sp->ports_ok = icmp != ICMP_NONE;
		sp->sport = icmp;
		sp->dport = icmp;
	} else if (p == IPPROTO_SCTP || p == IPPROTO_UDPLITE) {
		/* parse.h reads no ports of these: the header ipset reads
		 * (sctphdr 12 bytes, udphdr 8) must lie within the packet;
		 * read by helper, so no packet pointer's range changes */
		u8 *raw = sc->raw;
		u32 need = p == IPPROTO_SCTP ? 12 : 8;
#if HOOK_TC
		if (bpf_skb_load_bytes(ctx, sizeof(struct ethhdr), raw, 1))
			return;
#else
		if (bpf_xdp_load_bytes(ctx, sizeof(struct ethhdr), raw, 1))
			return;
#endif
		u32 hlen = (SET_READ(raw[0]) & 0xF) * 4;
		if (hlen + need > SET_READ(sp->length))
			return;
		u32 off = sizeof(struct ethhdr) + hlen;
#if HOOK_TC
		if (bpf_skb_load_bytes(ctx, off, raw, 4))
			return;
#else
		if (bpf_xdp_load_bytes(ctx, off, raw, 4))
			return;
#endif
		sp->ports_ok = 1;
		sp->sport = ((u32)raw[0] << 8) | raw[1];
		sp->dport = ((u32)raw[2] << 8) | raw[3];
	} else {
		sp->ports_ok = 1;	/* no ports: port 0 */
	}
}

/* the maps' accessors, defined in filter.c (bcc rewrites map calls there) */
static __always_inline struct set_val *set_ip_get(struct set_ip_key *k);
static __always_inline struct set_val *set_net_get(struct set_net_key *k);
static __always_inline struct set_val *set_ipport_get(struct set_ipport_key *k);
static __always_inline u64 *set_port_get(u32 *k);

static __always_inline u32 set_alive(struct set_val *v)
{
	return v->expires == 0 || bpf_ktime_get_ns() < v->expires;
}

/* 1 when the packet is in the check's set under its directions. */
static __always_inline u32 set_hit(struct set_check *ck, struct set_scratch *sc)
{
	struct set_packet *sp = &sc->sp;
	u32 hit = 0;
	u32 f = ck->flags;
	if (f & SET_DIMS) {
		u32 addr = (f & SET_SRC0) ? SET_READ(sp->saddr) : SET_READ(sp->daddr);
		if (ck->type == SET_TYPE_IP) {
			sc->ip.id = ck->id;
			sc->ip.addr = addr;
			struct set_val *v = set_ip_get(&sc->ip);
			hit = v && set_alive(v);
		} else if (ck->type == SET_TYPE_NET) {
			sc->net.prefixlen = 64;
			sc->net.id = bpf_htonl(ck->id);
			sc->net.addr = addr;
			u32 want_nomatch = (f & SET_RETURN_NOMATCH) ? 1 : 0;
			/* the most specific live element: an expired one is passed
			 * over for the next shorter prefix, as the kernel's walk
			 * over the set's prefix lengths does (the next command
			 * removes expired elements from the map) */
#pragma clang loop unroll(disable)
			for (int r = 0; r < SET_NET_RETRIES; r++) {
				struct set_val *v = set_net_get(&sc->net);
				if (!v)
					break;
				if (set_alive(v)) {
					hit = v->nomatch == want_nomatch;
					break;
				}
				u32 cidr = v->cidr & 63;
				if (cidr == 0)
					break;
				sc->net.prefixlen = 32 + cidr - 1;
			}
		} else if (ck->type == SET_TYPE_IPPORT) {
			if (sp->ports_ok) {
				sc->ipport.id = ck->id;
				sc->ipport.addr = addr;
				sc->ipport.proto = sp->proto;
				sc->ipport.pad = 0;
				sc->ipport.port = (f & SET_SRC1) ? sp->sport : sp->dport;
				struct set_val *v = set_ipport_get(&sc->ipport);
				hit = v && set_alive(v);
			}
		} else if (ck->type == SET_TYPE_BITMAP) {
			/* bitmap:port looks at TCP and UDP ports only */
			if (sp->ports_ok && (sp->proto == IPPROTO_TCP || sp->proto == IPPROTO_UDP)) {
				u32 port = ((f & SET_SRC0) ? sp->sport : sp->dport) & 0xFFFF;
				sc->word = ck->id * SET_BITMAP_WORDS + (port >> 6);
				u64 *word = set_port_get(&sc->word);
				hit = word && ((*word >> (port & 63)) & 1);
			}
		}
	}
	return hit;
}

#endif
