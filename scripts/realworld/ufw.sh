#!/bin/bash
# Generate tests/data/realworld/ufw.rules: the filter table that ufw (the
# Debian package, `apt-get install ufw`) writes with iptables-legacy, inside
# a throw-away network namespace. Run by hand as root; CI uses the stored file.
#
# ufw keeps its configuration in /etc/ufw, /etc/default/ufw and /lib/ufw and
# calls `iptables` (the host's alternative: iptables-nft here). Everything
# runs in a private mount namespace inside the network namespace, where
# those directories are copies and iptables* are bind mounts of the
# -legacy tools: neither the host's files nor the root namespace's firewall
# are touched.
set -euo pipefail
out=${1:-$(dirname "$0")/../../tests/data/realworld/ufw.rules}
ns=rwufw-$$
work=$(mktemp -d)
trap 'ip netns del $ns 2>/dev/null || true; rm -rf "$work"' EXIT
cp -a /etc/ufw "$work/etc-ufw"
cp -a /etc/default/ufw "$work/default-ufw"
cp -a /lib/ufw "$work/lib-ufw"
ip netns add $ns
ip netns exec $ns ip link set lo up
ip netns exec $ns unshare -m --propagation private bash -euo pipefail -c '
  work=$1
  mount --bind "$work/etc-ufw" /etc/ufw
  mount --bind "$work/default-ufw" /etc/default/ufw
  mount --bind "$work/lib-ufw" /lib/ufw
  for t in iptables iptables-save iptables-restore; do
    mount --bind /usr/sbin/${t/iptables/iptables-legacy} /usr/sbin/$t
    mount --bind /usr/sbin/${t/iptables/ip6tables-legacy} /usr/sbin/${t/iptables/ip6tables}
  done
  iptables -V >&2
  ufw --force enable >&2
  ufw allow 22/tcp >&2
  ufw limit ssh >&2
  ufw deny 23 >&2
  ufw allow from 10.0.0.0/8 to any port 80 proto tcp >&2
  ufw status verbose >&2
  iptables-legacy-save -t filter
' _ "$work" | grep -v '^#' > "$out"
echo "wrote $out ($(grep -c '^-A' "$out") rules)" >&2
