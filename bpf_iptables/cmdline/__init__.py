"""Command-line parsing: getopt_long emulation and iptables' do_parse()."""
