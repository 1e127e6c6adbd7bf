/* -j LOG in the data path: the event a LOG entry sends to the logger.
 *
 * The classifier copies the start of the frame (Ethernet header on) and
 * what the kernel's LOG target reads besides the packet (the devices, the
 * mark, the rule's level, flags and prefix) into a BPF ring buffer pinned
 * per namespace; the logger (bpf_iptables/datapath/logger.py) formats the
 * line as nf_log_syslog.c does. A full ring never blocks or drops the
 * packet: the event is lost and counted per CPU (log_lost). */
#ifndef BPF_IPTABLES_LOG_H
#define BPF_IPTABLES_LOG_H

#define LOG_PREFIX 32	/* xt_log_info's prefix[30], padded */
#define LOG_CAP 256	/* frame bytes kept: Ethernet, IP and TCP headers with
			 * options, an ICMP error's quoted header */

#ifndef LOG_RING_BYTES
#define LOG_RING_BYTES (256 * 1024)	/* ~750 events (a power of two of pages) */
#endif

struct log_info {	/* per LOG rule (log_map slot), written by user space */
	u32 level;
	u32 flags;	/* XT_LOG_* */
	u32 hook;	/* the classifier's: 0 INPUT, 1 FORWARD, 2 OUTPUT */
	u32 pad;
	char prefix[LOG_PREFIX];
};

struct log_event {
	u32 hook;	/* 0 INPUT, 1 FORWARD, 2 OUTPUT */
	u32 ifindex;	/* the device: input (INPUT, FORWARD) or output (OUTPUT) */
	u32 mark;
	u32 level;
	u32 flags;
	u32 wire_len;	/* bytes of the frame */
	u32 cap_len;	/* bytes of it in data[] */
	u32 oif;	/* FORWARD: the egress device of the kernel's route */
	char prefix[LOG_PREFIX];
	u8 data[LOG_CAP];
};

#endif
