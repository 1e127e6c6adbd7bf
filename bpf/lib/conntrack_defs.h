/* Connection tracking: constants and layouts shared by the classifier's
 * maps (declared in filter.c, see conntrack.h) and bpf_iptables/conntrack/table.py. */
#ifndef BPF_IPTABLES_CONNTRACK_DEFS_H
#define BPF_IPTABLES_CONNTRACK_DEFS_H

/* CT_PIN_DIR: the namespace's conntrack pin directory (without it the
 * program has private maps) */
#ifndef CT_MAX
#define CT_MAX 65536
#endif

/* ctstate (the ctstate field's slot: state + 4 * direction + 8 * the
 * status bits SEEN_REPLY, ASSURED, CONFIRMED as bits 0-2; CT_SLOT) */
#define CT_INVALID 0
#define CT_NEW 1
#define CT_ESTABLISHED 2
#define CT_RELATED 3
#define CT_ORIGINAL 0
#define CT_REPLY 1

#define IPS_SEEN_REPLY 2
#define IPS_ASSURED 4
#define IPS_CONFIRMED 8

/* TCP states (enum tcp_conntrack); IV: invalid, IG: ignored */
#define sNO 0
#define sSS 1
#define sSR 2
#define sES 3
#define sFW 4
#define sCW 5
#define sLA 6
#define sTW 7
#define sCL 8
#define sS2 9
#define sIV 10
#define sIG 11
/* flag classes (get_conntrack_index) */
#define I_SYN 0
#define I_SYNACK 1
#define I_FIN 2
#define I_ACK 3
#define I_RST 4
#define I_NONE 5

/* config slots: timeouts in seconds (0: netfilter's default), TCP states
 * by number, then these; CT_C_NO_LOOSE: 1 when nf_conntrack_tcp_loose=0 */
#define CT_T_UNACK 10
#define CT_T_UDP 11
#define CT_T_UDP_STREAM 12
#define CT_T_ICMP 13
#define CT_T_GENERIC 14
#define CT_C_NO_LOOSE 15
#define CT_NCONFIG 16
/* stats slots (per-CPU): entries inserted, entries deleted by the programs */
#define CT_S_INSERTS 0
#define CT_S_DELETES 1
/* slot 2: expired entries the namespace daemon swept (table.py, not here) */
#define CT_NSTATS 4

#define NSEC 1000000000ULL
/* a packet arriving on lo was tracked when it left through lo (OUTPUT) */
#define CT_LO_IFINDEX 1
#define CT_SLOTS 64
#define CT_SLOT(s) (((s)->state + 4 * (s)->dir + 8 * (((s)->status >> 1) & 7)) & (CT_SLOTS - 1))

struct ct_key {
	u32 a_addr;	/* host byte order; TCP/UDP/generic: the lower endpoint */
	u32 b_addr;
	u16 a_port;	/* ICMP: the identifier */
	u16 b_port;	/* ICMP: request type << 8 | code */
	u32 proto;
};

struct ct_entry {
	u64 expires;	/* bpf_ktime_get_ns() deadline */
	u64 stream_ts;	/* UDP: when the stream timeout starts to apply */
	u8 swapped;	/* the original direction is b -> a */
	u8 tcp_state;
	u8 status;	/* IPS_* */
	u8 close_init;
	u8 last_index;
	u8 last_dir;
	u8 dying;	/* killed (a RST before any reply): gone for every lookup
			 * but the loopback's second look at the same packet */
	u8 pad;
	/* ct->timeout as netfilter keeps it, for --ctexpire: a deadline in
	 * 32-bit jiffies, or while unconfirmed the timeout itself */
	u32 jexpires;
	u32 pad2;
};

struct ct_seen {
	u32 state;
	u32 dir;
	u32 pending;	/* entry is new: insert it on ACCEPT */
	u32 status;	/* the connection's IPS_* bits after this packet */
	struct ct_key key;
	struct ct_entry entry;
	/* what xt_conntrack's tuple and expiry checks read (ct_view): the
	 * entry's tuples (for RELATED: the quoted flow's), its remaining
	 * lifetime in seconds; tracked 0 for INVALID (no entry) */
	u64 now;
	u32 jexpires;	/* the entry's ct_entry.jexpires after this packet */
	u32 swapped;
	u32 tracked;
	u32 tup[4];	/* orig src, orig dst, reply src, reply dst (host order) */
	u32 tport[4];	/* their ports (ICMP: id, type << 8 | code) */
	u32 tproto;
	u32 remaining;	/* nf_ct_expires() / HZ */
};

/* A rule's xt_conntrack tuple and expiry tests, checked per candidate
 * (ctcheck_map, one per classifier entry; flags 0: nothing to check).
 * flags/inv are xt_conntrack's match_flags/invert_flags bits. */
#define CTC_PROTO (1 << 1)
#define CTC_ADDR0 (1 << 2)	/* origsrc, origdst, replsrc, repldst: << i */
#define CTC_EXPIRES (1 << 7)
#define CTC_PORT0 (1 << 8)	/* origsrcport ... repldstport: << i */
struct ct_check {
	u32 flags;
	u32 inv;
	u32 addr[4];
	u32 mask[4];
	u32 plo[4];
	u32 phi[4];
	u32 proto;
	u32 exp_lo;
	u32 exp_hi;
	u32 next;	/* the entry's next check: a ctextra_map slot (0: none) */
};
#define CT_CHECKS_MAX 4	/* checks per entry (fields.CT_CHECKS_MAX) */

#endif
