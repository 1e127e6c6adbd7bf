#!/usr/bin/env bash
# Demo of the main job: bpf-iptables enforcing a rule set on real traffic.
#
# Two private network namespaces joined by a veth pair, client (10.200.0.1,
# c0) and server (10.200.0.2, s0). The server loads examples/traffic.rules
# (or the rule file given as $1) with bpf-iptables-restore, which attaches
# the eBPF data path by itself (XDP on every interface, TC at egress) before
# it returns; `bpf-iptables-datapath status' shows what is attached.
# The client then sends real traffic: ping, TCP connects to an accepted and
# a dropped port, UDP datagrams to an accepted and two dropped ports
# (scripts/demo_traffic.py). The server's `bpf-iptables -L -v -n` shows
# the counters that traffic produced. Fails (exit 1) unless every packet
# was delivered or dropped as the rules say and every counter of INPUT and
# its user chain equals what the traffic must have produced. On every exit
# path the data path is detached and both namespaces deleted (with them the
# veth pair).
#
# The Python that runs bpf-iptables: .venv/bin/python, or $BPF_IPTABLES_PYTHON.
set -euo pipefail
# enforcement is the default; a caller's model-only setting must not turn it off here
export BPF_IPTABLES_DATAPATH=on

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RULES="${1:-$REPO/examples/traffic.rules}"
PY="${BPF_IPTABLES_PYTHON:-$REPO/.venv/bin/python}"
BIN="$(dirname "$PY")"

tag="$$-$RANDOM"
NS_CLIENT="bpft-demo-client-$tag"
NS_SERVER="bpft-demo-server-$tag"
WORK="$(mktemp -d)"
made=()

# Our tools by their installed names where the venv has them (what a user
# types), else the same entry point through the module.
declare -A MODULE=([bpf-iptables]=iptables [bpf-iptables-save]=save
                   [bpf-iptables-restore]=restore [bpf-iptables-datapath]=datapath)
server() {
    local tool="$1"; shift
    if [[ -x "$BIN/$tool" ]]; then
        ip netns exec "$NS_SERVER" "$BIN/$tool" "$@"
    else
        ip netns exec "$NS_SERVER" "$PY" -m "bpf_iptables.cli.${MODULE[$tool]}" "$@"
    fi
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ " ${made[*]} " == *" $NS_SERVER "* ]]; then
        # detach first (programs, pins), then our per-namespace state (keyed
        # by the netns cookie), then the namespaces (and the veth pair)
        server bpf-iptables-datapath detach >/dev/null 2>&1 || true
        ip netns exec "$NS_SERVER" "$PY" -c \
            'import shutil; from bpf_iptables import state; shutil.rmtree(state.namespace_dir(), ignore_errors=True)' \
            2>/dev/null || true
    fi
    for ns in "${made[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The data path pins its programs in a bpffs that must be mounted in the
# host's mount namespace (where this script runs): setup.sh mounts it.
PINS=/run/bpf-iptables/bpffs
if ! mountpoint -q "$PINS"; then
    mkdir -p "$PINS"
    mount -t bpf bpf "$PINS"
fi

echo "==> traffic demo: client $NS_CLIENT (10.200.0.1) -- veth -- server $NS_SERVER (10.200.0.2)"
for ns in "$NS_CLIENT" "$NS_SERVER"; do
    ip netns add "$ns"
    made+=("$ns")
done
ip link add c0 netns "$NS_CLIENT" type veth peer name s0 netns "$NS_SERVER"
for spec in "$NS_CLIENT c0 10.200.0.1" "$NS_SERVER s0 10.200.0.2"; do
    read -r ns dev addr <<<"$spec"
    # IPv4 only: nothing but the demo's packets (and ARP) crosses the link
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
    ip -n "$ns" addr add "$addr/24" dev "$dev"
    ip -n "$ns" link set "$dev" up
    ip -n "$ns" link set lo up
done

echo
echo "server\$ bpf-iptables-restore < $(basename "$RULES")"
server bpf-iptables-restore <"$RULES"
echo "server\$ bpf-iptables-datapath status"
server bpf-iptables-datapath status
# where the server's rule set and the data path's pins live (gone at the end)
ip netns exec "$NS_SERVER" "$PY" -c \
    'from bpf_iptables import state; from bpf_iptables.datapath import attachment as A
d = state.namespace_dir(); print(f"(state {d}, pins {A.pin_root() / d.name})")'

echo
echo "client: real traffic to the server"
"$PY" "$REPO/scripts/demo_traffic.py" traffic "$NS_CLIENT" "$NS_SERVER" "$WORK/traffic.json"

echo
echo "server\$ bpf-iptables -L -v -n"
server bpf-iptables -L -v -n
server bpf-iptables-save -c >"$WORK/save"

echo
"$PY" "$REPO/scripts/demo_traffic.py" check "$WORK/traffic.json" <"$WORK/save"
