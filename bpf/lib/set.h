/* -m set in the data path: ipset membership (bpf_iptables/ipset/match.py
 * is the same logic in Python, and says where it comes from in the
 * kernel: ip_set_get_ip4_port() and the set types' kadt functions).
 *
 * The namespace's sets live in four maps, one per set type, keyed by the
 * set's id (bpf_iptables/ipset/maps.py writes them; filter.c declares them
 * and gives the accessors below, since bcc rewrites map calls in that file
 * only). A rule's set matches are per-candidate checks: per entry, the
 * first of its struct set_check records (0: none), chained by ``next``. */
#ifndef BPF_IPTABLES_SET_H
#define BPF_IPTABLES_SET_H

#define SET_TYPE_IP 1		/* hash:ip */
#define SET_TYPE_NET 2		/* hash:net */
#define SET_TYPE_IPPORT 3	/* hash:ip,port */
#define SET_TYPE_BITMAP 4	/* bitmap:port */

#define SET_SRC0 1		/* dimension 1 is the source (address or port) */
#define SET_SRC1 2		/* dimension 2 (the port of hash:ip,port) is the source */
#define SET_INV 4		/* ! --match-set */
#define SET_DIMS 8		/* the rule gives as many directions as the set has
				 * dimensions (else ip_set_test() says no) */

#define SET_BITMAP_WORDS 1024	/* 65,536 bits per bitmap:port set */
#define SET_CHECKS_MAX 4	/* per entry (fields.py refuses more) */

struct set_check {
	u32 type;
	u32 id;
	u32 flags;
	u32 next;		/* set_check_map slot of the entry's next check, 0: last */
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
};

static __always_inline void set_packet_of(void *data, void *data_end,
					  struct packet_fields *pf, struct set_packet *sp)
{
	sp->saddr = pf->saddr;
	sp->daddr = pf->daddr;
	sp->proto = pf->proto;
	sp->ports_ok = 0;
	sp->sport = 0;
	sp->dport = 0;
	u32 p = pf->proto;
	int with_ports = p == IPPROTO_TCP || p == IPPROTO_UDP || p == IPPROTO_SCTP ||
			 p == IPPROTO_UDPLITE || p == IPPROTO_ICMP;
	if (p == 0)
		return;
	if (pf->fragment) {
		/* no port for a non-first fragment of a protocol with ports;
		 * others match with port 0 */
		sp->ports_ok = !with_ports;
		return;
	}
	if (p == IPPROTO_TCP || p == IPPROTO_UDP) {
		sp->ports_ok = pf->l4;
		sp->sport = pf->sport;
		sp->dport = pf->dport;
	} else if (p == IPPROTO_ICMP) {
		sp->ports_ok = pf->icmp != ICMP_NONE;
		sp->sport = pf->icmp;
		sp->dport = pf->icmp;
	} else if (p == IPPROTO_SCTP || p == IPPROTO_UDPLITE) {
		/* parse.h reads no ports of these: the header ipset reads
		 * (sctphdr 12 bytes, udphdr 8) must lie within the packet */
		struct iphdr *ip = data + sizeof(struct ethhdr);
		if ((void *)(ip + 1) > data_end)
			return;
		u32 hlen = (ip->ihl & 0xF) * 4;
		u32 need = p == IPPROTO_SCTP ? 12 : 8;
		u8 *l4 = (u8 *)ip + hlen;
		if (hlen + need > pf->length)
			return;
		if (need == 12) {
			if ((void *)(l4 + 12) > data_end)
				return;
		} else if ((void *)(l4 + 8) > data_end) {
			return;
		}
		sp->ports_ok = 1;
		sp->sport = ((u32)l4[0] << 8) | l4[1];
		sp->dport = ((u32)l4[2] << 8) | l4[3];
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

/* 1 when the candidate fails this check. */
static __always_inline u64 set_miss(struct set_check *ck, struct set_packet *sp)
{
	u32 hit = 0;
	u32 f = ck->flags;
	if (f & SET_DIMS) {
		u32 addr = (f & SET_SRC0) ? sp->saddr : sp->daddr;
		if (ck->type == SET_TYPE_IP) {
			struct set_ip_key k = {.id = ck->id, .addr = addr};
			struct set_val *v = set_ip_get(&k);
			hit = v && set_alive(v);
		} else if (ck->type == SET_TYPE_NET) {
			struct set_net_key k = {.prefixlen = 64, .id = bpf_htonl(ck->id),
						.addr = addr};
			struct set_val *v = set_net_get(&k);
			hit = v && !v->nomatch && set_alive(v);
		} else if (ck->type == SET_TYPE_IPPORT) {
			if (sp->ports_ok) {
				struct set_ipport_key k = {};
				k.id = ck->id;
				k.addr = addr;
				k.proto = sp->proto;
				k.port = (f & SET_SRC1) ? sp->sport : sp->dport;
				struct set_val *v = set_ipport_get(&k);
				hit = v && set_alive(v);
			}
		} else if (ck->type == SET_TYPE_BITMAP) {
			/* bitmap:port looks at TCP and UDP ports only */
			if (sp->ports_ok && (sp->proto == IPPROTO_TCP || sp->proto == IPPROTO_UDP)) {
				u32 port = ((f & SET_SRC0) ? sp->sport : sp->dport) & 0xFFFF;
				u32 w = ck->id * SET_BITMAP_WORDS + (port >> 6);
				u64 *word = set_port_get(&w);
				hit = word && ((*word >> (port & 63)) & 1);
			}
		}
	}
	return (f & SET_INV) ? hit : !hit;
}

#endif
