"""Connection tracking: a Python model of netfilter's tracker (tracker.py),
the eBPF table's layout and control (table.py), conntrack -L text (listing.py)."""
