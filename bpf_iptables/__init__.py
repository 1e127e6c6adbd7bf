"""bpf-iptables: iptables-compatible firewall whose rules run as eBPF programs."""

VERSION = "0.1.0"
