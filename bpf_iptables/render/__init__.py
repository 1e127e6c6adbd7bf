"""Canonical text: -S and iptables-save lines, and -L listings."""
