"""ipset-compatible sets kept by bpf-iptables (``bpf-iptables-set``): the
model and element syntax (model.py), the per-namespace store (store.py),
its BPF maps (maps.py), the command line (cmdline.py), the commands
(command.py) and membership as the kernel decides it (match.py)."""
