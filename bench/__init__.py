"""Benchmarks of bpf-iptables against iptables-legacy, measured in the same run."""
