/* Connection tracking for the classifiers (compiled in with -DCONNTRACK=1).
 *
 * The same rules as the Python model (bpf_iptables/conntrack/tracker.py,
 * which documents them and what is not modelled): netfilter's TCP state
 * table with loose pickup, UDP, ICMP queries/answers, ICMP errors RELATED
 * to the flow they quote, generic tracking for other protocols.
 *
 * One table per namespace, pinned outside the generations (CT_PIN_DIR:
 * <namespace pins>/conntrack), so every classifier of both generations
 * and all hooks (INPUT/FORWARD at ingress, OUTPUT at egress) shares it and
 * an update keeps it. An LRU hash: a full table evicts the least recently
 * used entry (evictions = inserts - deletes - entries, see table.py).
 *
 * Per packet: ct_track() before classification gives the ctstate (and
 * updates a known entry, as netfilter's tracker does before the filter
 * table); ct_confirm() after an ACCEPT verdict inserts a new entry (as
 * netfilter confirms new entries only for accepted packets). Between the
 * two the result waits in a per-CPU slot (ct_scratch), which also carries
 * it across the classifier's own tail calls (a long scan must not track
 * the packet twice).
 *
 * Entries are updated in place without a lock: two CPUs handling packets
 * of one flow at the same instant may lose one of the two updates. */
#ifndef BPF_IPTABLES_CONNTRACK_H
#define BPF_IPTABLES_CONNTRACK_H

/* The maps (lib/conntrack_defs.h layouts) and their accessors ct_lookup,
 * ct_delete, ct_insert, ct_config_get, ct_stat are defined by the
 * including program (filter.c) before this header: bcc rewrites map
 * calls in the main source file only. */

/* netfilter's defaults (if-chains: a switch may become a jump table, which
 * the verifier refuses) */
static __always_inline u32 ct_default(u32 slot)
{
	if (slot == sSS || slot == sFW || slot == sTW || slot == sS2)
		return 120;
	if (slot == sSR || slot == sCW)
		return 60;
	if (slot == sES)
		return 432000;
	if (slot == sLA || slot == CT_T_UDP || slot == CT_T_ICMP)
		return 30;
	if (slot == sCL)
		return 10;
	if (slot == CT_T_UNACK)
		return 300;
	if (slot == CT_T_UDP_STREAM)
		return 120;
	return 600;
}

static __always_inline u64 ct_timeout(u32 slot)
{
	u32 v = ct_config_get(slot);
	u64 sec = v ? v : ct_default(slot);
	return sec * NSEC;
}

/* A confirmed entry's new deadline, t ns from now: in ns for the
 * expiry, and in jiffies as netfilter's ct->timeout (for --ctexpire) */
static __always_inline void ct_refresh(struct ct_entry *e, u64 now, u64 t)
{
	e->expires = now + t;
	e->jexpires = (u32)bpf_jiffies64() + (u32)(t / NSEC * CT_HZ);
}

/* tcp_conntracks[dir][index][old], each row 10 states of 4 bits */
#define ROW(a, b, c, d, e, f, g, h, i, j)                                              \
	((u64)(a) | (u64)(b) << 4 | (u64)(c) << 8 | (u64)(d) << 12 | (u64)(e) << 16 | \
	 (u64)(f) << 20 | (u64)(g) << 24 | (u64)(h) << 28 | (u64)(i) << 32 | (u64)(j) << 36)
static __always_inline u32 tcp_next(u32 dir, u32 index, u32 old)
{
	u64 row;
	if (index == I_SYN)
		row = dir == CT_ORIGINAL ? ROW(sSS, sSS, sIG, sIG, sIG, sIG, sIG, sSS, sSS, sS2)
					 : ROW(sIV, sS2, sIV, sIV, sIV, sIV, sIV, sSS, sIV, sS2);
	else if (index == I_SYNACK)
		row = dir == CT_ORIGINAL ? ROW(sIV, sIV, sSR, sIV, sIV, sIV, sIV, sIV, sIV, sSR)
					 : ROW(sIV, sSR, sIG, sIG, sIG, sIG, sIG, sIG, sIG, sSR);
	else if (index == I_FIN)
		row = ROW(sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV);
	else if (index == I_ACK)
		row = dir == CT_ORIGINAL ? ROW(sES, sIV, sES, sES, sCW, sCW, sTW, sTW, sCL, sIV)
					 : ROW(sIV, sIG, sSR, sES, sCW, sCW, sTW, sTW, sCL, sIG);
	else if (index == I_RST)
		row = ROW(sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL);
	else
		return sIV;
	return (row >> ((old & 0xF) * 4)) & 0xF;
}

static __always_inline u32 tcp_index(u32 flags)
{
	if (flags & 0x04)
		return I_RST;
	if (flags & 0x02)
		return (flags & 0x10) ? I_SYNACK : I_SYN;
	if (flags & 0x01)
		return I_FIN;
	if (flags & 0x10)
		return I_ACK;
	return I_NONE;
}

/* tcp_valid_flags[]: FIN SYN RST ACK URG combinations tcp_error() accepts */
#define TCP_VALID_MASK ((1ULL << 2) | (1ULL << 34) | (1ULL << 18) | (1ULL << 4) | \
			(1ULL << 20) | (1ULL << 17) | (1ULL << 49) | (1ULL << 16) | (1ULL << 48))
static __always_inline int tcp_flags_valid(u32 flags)
{
	return (TCP_VALID_MASK >> (flags & 0x37)) & 1;
}

static __always_inline int icmp_is_query(u32 t)
{
	return t == 8 || t == 13 || t == 15 || t == 17;
}

static __always_inline int icmp_is_answer(u32 t)
{
	return t == 0 || t == 14 || t == 16 || t == 18;
}

/* The table key of a flow and the flow's direction relative to the key
 * (tracker.flow_key); -1 for an ICMP type that cannot be tracked. */
static __always_inline int ct_make_key(u32 src, u32 dst, u32 proto, u32 sport, u32 dport,
				       struct ct_key *k)
{
	k->proto = proto;
	if (proto == IPPROTO_ICMP) {
		u32 type = (dport >> 8) & 0xFF;
		if (icmp_is_query(type)) {
			k->a_addr = src;
			k->b_addr = dst;
			k->a_port = sport;
			k->b_port = dport;
			return CT_ORIGINAL;
		}
		if (icmp_is_answer(type)) {
			k->a_addr = dst;
			k->b_addr = src;
			k->a_port = sport;
			k->b_port = ((type == 0 ? 8 : type - 1) << 8) | (dport & 0xFF);
			return CT_REPLY;
		}
		return -1;
	}
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
		sport = 0;
		dport = 0;
	}
	if (src < dst || (src == dst && sport <= dport)) {
		k->a_addr = src;
		k->b_addr = dst;
		k->a_port = sport;
		k->b_port = dport;
		return CT_ORIGINAL;
	}
	k->a_addr = dst;
	k->b_addr = src;
	k->a_port = dport;
	k->b_port = sport;
	return CT_REPLY;
}

/* Look up a key; an expired or killed entry is deleted and not found,
 * except for a second look (again: see ct_track), which changes nothing. */
static __always_inline struct ct_entry *ct_find(struct ct_key *k, u64 now, int again)
{
	struct ct_entry *e = ct_lookup(k);
	if (!e || again)
		return e;
	if (e->expires <= now || e->dying) {
		ct_delete(k);
		ct_stat(CT_S_DELETES);
		return 0;
	}
	return e;
}

/* tcp_packet() for a known entry (no window tracking): 0 ok or ignored,
 * 1 invalid, 2 reopen (entry deleted: track as new), 3 killed */
static __always_inline int ct_tcp(struct ct_entry *e, u32 d, u32 flags, u64 now)
{
	u32 index = tcp_index(flags);
	u32 old = e->tcp_state;
	u32 new = tcp_next(d, index, old);
	if (new == sSS && old >= sTW) {
		if (e->close_init || (e->last_dir == d && e->last_index == I_RST))
			return 2;
		new = sIG;
	}
	if (new == sIG) {
		e->last_index = index;
		e->last_dir = d;
		return 0;
	}
	if (new == sIV)
		return 1;
	e->last_index = index;
	e->last_dir = d;
	e->tcp_state = new;
	if (old != new && new == sFW)
		e->close_init = 1;
	u64 t = ct_timeout(new);
	if (index == I_RST)
		t = ct_timeout(sCL);
	if (!(e->status & IPS_SEEN_REPLY)) {
		if (flags & 0x04)
			return 3;
		if (new == sES) {
			u64 u = ct_timeout(CT_T_UNACK);
			t = t < u ? t : u;
		}
	} else if (!(e->status & IPS_ASSURED) && (old == sSR || old == sES) && new == sES) {
		e->status |= IPS_ASSURED;
	}
	ct_refresh(e, now, t);
	return 0;
}

/* A connection the table does not know: the entry to insert on ACCEPT. */
static __always_inline void ct_new(struct ct_seen *s, int kdir, u32 proto, u32 flags, u64 now)
{
	struct ct_entry *e = &s->entry;
	__builtin_memset(e, 0, sizeof(*e));
	e->swapped = kdir == CT_REPLY;
	if (proto == IPPROTO_TCP) {
		u32 index = tcp_index(flags);
		u32 new = tcp_next(CT_ORIGINAL, index, sNO);
		if (new == sIV)
			return;
		if (new != sSS) {
			if (ct_config_get(CT_C_NO_LOOSE))
				return;
		}
		e->tcp_state = new;
		e->last_index = index;
		u64 t = ct_timeout(new);
		if (new == sES) {
			u64 u = ct_timeout(CT_T_UNACK);
			t = t < u ? t : u;
		}
		e->expires = now + t;
	} else if (proto == IPPROTO_UDP) {
		e->expires = now + ct_timeout(CT_T_UDP);
		e->stream_ts = now + 2 * NSEC;
	} else if (proto == IPPROTO_ICMP) {
		if (kdir != CT_ORIGINAL)
			return;
		e->expires = now + ct_timeout(CT_T_ICMP);
	} else {
		e->expires = now + ct_timeout(CT_T_GENERIC);
	}
	/* unconfirmed: ct->timeout holds the timeout itself, not a deadline
	 * (__nf_ct_refresh_acct adds the time stamp only to a confirmed
	 * entry; __nf_conntrack_confirm adds it on confirmation) */
	e->jexpires = (u32)((e->expires - now) / NSEC * CT_HZ);
	s->state = CT_NEW;
	s->dir = CT_ORIGINAL;
	s->pending = 1;
}

/* The packet's ctstate into *s; a known entry is updated. pf comes from
 * parse_packet() (which accepted the IPv4 header). */
static __always_inline void ct_track_state(void *data, void *data_end,
					   struct packet_fields *pf, struct ct_seen *s, u64 now,
					   int again)
{
	s->state = CT_INVALID;
	s->dir = CT_ORIGINAL;
	s->pending = 0;
	s->status = 0;
	struct iphdr *ip = data + sizeof(struct ethhdr);
	if ((void *)(ip + 1) > data_end)
		return;
	/* fragments are not reassembled here: not tracked, INVALID */
	if (bpf_ntohs(ip->frag_off) & 0x3FFF)
		return;
	u32 proto = ip->protocol;
	u32 src = bpf_ntohl(ip->saddr), dst = bpf_ntohl(ip->daddr);
	u32 sport = pf->sport, dport = pf->dport, flags = 0;
	u8 *l4 = (u8 *)ip + ((ip->ihl & 0xF) * 4);
	int kdir;
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
		if (!pf->l4)
			return;		/* truncated header: tcp_error/udp_error */
		if (proto == IPPROTO_TCP) {
			flags = pf->tcp_flags & 0x3F;
			if (!tcp_flags_valid(flags))
				return;
		}
	} else if (proto == IPPROTO_ICMP) {
		if (pf->icmp == ICMP_NONE || l4 + 8 > (u8 *)data_end)
			return;
		u32 type = l4[0];
		if (type == 3 || type == 4 || type == 5 || type == 11 || type == 12) {
			/* an error: RELATED to the flow of the packet it quotes */
			struct iphdr *in = (struct iphdr *)(l4 + 8);
			if ((void *)(in + 1) > data_end || in->ihl < 5)
				return;
			if (bpf_ntohs(in->frag_off) & 0x1FFF)
				return;
			u8 *il4 = (u8 *)in + ((in->ihl & 0xF) * 4);
			if (il4 + 8 > (u8 *)data_end)
				return;
			u32 iproto = in->protocol;
			u32 isrc = bpf_ntohl(in->saddr), idst = bpf_ntohl(in->daddr);
			u32 isport = 0, idport = 0;
			if (iproto == IPPROTO_TCP || iproto == IPPROTO_UDP) {
				isport = ((u32)il4[0] << 8) | il4[1];
				idport = ((u32)il4[2] << 8) | il4[3];
			} else if (iproto == IPPROTO_ICMP) {
				isport = ((u32)il4[4] << 8) | il4[5];
				idport = ((u32)il4[0] << 8) | il4[1];
			}
			int idir = ct_make_key(isrc, idst, iproto, isport, idport, &s->key);
			if (idir < 0)
				return;
			struct ct_entry *e = ct_find(&s->key, now, again);
			if (!e || dst != isrc)
				return;
			s->state = CT_RELATED;
			s->dir = (idir ^ e->swapped ^ 1) & 1;
			s->status = e->status;
			s->swapped = e->swapped;
			s->jexpires = e->jexpires;	/* not refreshed */
			return;
		}
		sport = ((u32)l4[4] << 8) | l4[5];
		dport = pf->icmp & 0xFFFF;
	}
	kdir = ct_make_key(src, dst, proto, sport, dport, &s->key);
	if (kdir < 0)
		return;
	struct ct_entry *e = ct_find(&s->key, now, again);
	if (!e) {
		ct_new(s, kdir, proto, flags, now);
		return;
	}
	/* keep clang from computing field addresses of e before the null
	 * check (the verifier refuses arithmetic on a maybe-null pointer) */
	asm volatile("" : "+r"(e));
	/* a second look works on a copy: the packet's effect on the entry
	 * was applied when it left (netfilter tracks it once, the skb keeps
	 * its entry). The copy only tells whether the first look found the
	 * packet INVALID (a valid transition's result never makes the same
	 * packet invalid, an invalid one left the state as it was); status
	 * and timeout are the entry's, as the first look left them (running
	 * a FIN twice would move FIN_WAIT on to LAST_ACK). */
	struct ct_entry copy;
	struct ct_entry *real = e;
	if (again) {
		__builtin_memcpy(&copy, e, sizeof(copy));
		e = &copy;
	}
	u32 d = (kdir ^ e->swapped) & 1;
	u32 state = (d == CT_REPLY || (e->status & IPS_SEEN_REPLY)) ? CT_ESTABLISHED : CT_NEW;
	if (proto == IPPROTO_TCP) {
		int r = ct_tcp(e, d, flags, now);
		if (r == 1)
			return;
		if (r == 2) {
			if (again) {
				/* (not expected: the first look replaced the
				 * entry) nothing to insert a second time */
				ct_new(s, kdir, proto, flags, now);
				s->pending = 0;
				s->swapped = s->entry.swapped;
				s->jexpires = s->entry.jexpires;
				return;
			}
			ct_delete(&s->key);
			ct_stat(CT_S_DELETES);
			ct_new(s, kdir, proto, flags, now);
			return;
		}
		if (r == 3) {
			/* the packet keeps the killed connection (netfilter
			 * still marks it SEEN_REPLY for a reply) */
			s->status = e->status | (d == CT_REPLY ? IPS_SEEN_REPLY : 0);
			s->swapped = e->swapped;
			s->jexpires = e->jexpires;	/* killed before the refresh */
			/* gone for every later lookup (deleted by the next one
			 * or the sweep), but a packet on lo still finds it at
			 * INPUT, as netfilter's skb keeps its dying entry */
			e->dying = 1;
			s->state = state;
			s->dir = d;
			return;
		}
	} else if (proto == IPPROTO_UDP) {
		if ((e->status & IPS_SEEN_REPLY) && now > e->stream_ts) {
			ct_refresh(e, now, ct_timeout(CT_T_UDP_STREAM));
			e->status |= IPS_ASSURED;
		} else {
			ct_refresh(e, now, ct_timeout(CT_T_UDP));
		}
	} else if (proto == IPPROTO_ICMP) {
		ct_refresh(e, now, ct_timeout(CT_T_ICMP));
	} else {
		ct_refresh(e, now, ct_timeout(CT_T_GENERIC));
	}
	if (d == CT_REPLY)
		e->status |= IPS_SEEN_REPLY;
	s->state = state;
	s->dir = d;
	s->status = e->status;
	s->swapped = e->swapped;
	s->jexpires = e->jexpires;
	if (again) {
		s->status = real->status;
		s->jexpires = real->jexpires;
	}
}

/* The connection's tuples and remaining lifetime, as xt_conntrack reads
 * them (no NAT: the reply tuple is the original turned around; ICMP's
 * reply tuple has the answer's type). */
static __always_inline void ct_view(struct ct_seen *s)
{
	s->tracked = s->state != CT_INVALID;
	if (!s->tracked)
		return;
	struct ct_key *k = &s->key;
	u32 sw = s->pending ? s->entry.swapped : s->swapped;
	u32 jexpires = s->pending ? s->entry.jexpires : s->jexpires;
	u32 osrc = sw ? k->b_addr : k->a_addr, odst = sw ? k->a_addr : k->b_addr;
	u32 osport = sw ? k->b_port : k->a_port, odport = sw ? k->a_port : k->b_port;
	s->tup[0] = osrc;
	s->tup[1] = odst;
	s->tup[2] = odst;
	s->tup[3] = osrc;
	s->tport[0] = osport;
	s->tport[1] = odport;
	s->tport[2] = odport;
	s->tport[3] = osport;
	s->tproto = k->proto;
	if (k->proto == IPPROTO_ICMP) {
		u32 type = (odport >> 8) & 0xFF;
		s->tport[2] = osport;	/* the identifier, both ways */
		s->tport[3] = (((type == 8 ? 0 : type + 1) & 0xFF) << 8) | (odport & 0xFF);
	}
	/* nf_ct_expires(): ct->timeout - 32-bit jiffies, at least 0; for an
	 * unconfirmed entry ct->timeout is the timeout itself, so what a NEW
	 * packet sees depends on the uptime (usually 0) */
	s32 j = (s32)(jexpires - (u32)bpf_jiffies64());
	s->remaining = j > 0 ? (u32)j / CT_HZ : 0;

}

/* again: the packet arrives on lo, so it was tracked when it left
 * through lo (OUTPUT, egress): look at the entry without changing it
 * (netfilter's PREROUTING skips a packet that carries its entry). */
static __always_inline void ct_track(void *data, void *data_end, struct packet_fields *pf,
				     struct ct_seen *s, int again)
{
	u64 now = bpf_ktime_get_ns();
	s->now = now;
	ct_track_state(data, data_end, pf, s, now, again);
	ct_view(s);
}

/* 1 when a tracked packet fails the rule's tuple or expiry tests (an
 * untracked one skips them: xt_conntrack returns after the state test) */
static __always_inline u64 ct_check_miss(struct ct_check *c, struct ct_seen *s)
{
	u32 f = c->flags, inv = c->inv;
	if (!f || !s->tracked)
		return 0;
	u64 miss = 0;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		if (f & (CTC_ADDR0 << i))
			miss |= (((s->tup[i] ^ c->addr[i]) & c->mask[i]) == 0) ==
				!!(inv & (CTC_ADDR0 << i));
		if (f & (CTC_PORT0 << i))
			miss |= (s->tport[i] >= c->plo[i] && s->tport[i] <= c->phi[i]) ==
				!!(inv & (CTC_PORT0 << i));
	}
	if (f & CTC_PROTO)
		miss |= (s->tproto == c->proto) == !!(inv & CTC_PROTO);
	if (f & CTC_EXPIRES)
		miss |= (s->remaining >= c->exp_lo && s->remaining <= c->exp_hi) ==
			!!(inv & CTC_EXPIRES);
	return miss;
}

/* The packet was accepted: a new connection enters the table. */
static __always_inline void ct_confirm(struct ct_seen *s)
{
	if (!s->pending)
		return;
	s->pending = 0;
	s->entry.status |= IPS_CONFIRMED;
	s->entry.jexpires += (u32)bpf_jiffies64();
	ct_insert(&s->key, &s->entry);
	ct_stat(CT_S_INSERTS);
}

#endif
