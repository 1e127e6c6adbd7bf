#!/usr/bin/env bash
# Set up bpf-iptables on a fresh Debian 12 machine (as root), then run the demo.
#
# Idempotent: every step checks whether it is already done, so running it
# again only re-runs the demo. Steps:
#   1. Debian packages (bcc for Python, kernel headers, the real iptables as
#      the oracle of the tests, iproute2 for namespaces, bpftool, venv).
#   2. /lib/modules/$(uname -r)/{build,source} links to the installed Debian
#      headers: bcc compiles only when it finds them, and the running kernel
#      may have none of its own (networking programs only use UAPI headers).
#   3. bpffs at /sys/fs/bpf (may be unmounted on a fresh machine) and at
#      /run/bpf-iptables/bpffs (the data path's pins).
#   4. .venv from /usr/bin/python3 with --system-site-packages (the only way
#      to see Debian's bcc), with the project installed editable plus tests;
#      bpf-iptables, -save and -restore then replaced by the C client.
#   5. scripts/demo.sh: a sample rule set in a private network namespace;
#      then scripts/demo-traffic.sh: a rule set enforced by the eBPF data
#      path on real traffic between two namespaces, with its counters.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

log() { printf '==> %s\n' "$*"; }

if [[ $EUID -ne 0 ]]; then
    echo "setup.sh: must run as root (installs packages, mounts bpffs, creates namespaces)" >&2
    exit 1
fi

# --- 1. Debian packages ------------------------------------------------------
# util-linux: nsenter, mountpoint; procps: sysctl (tests forward packets);
# gcc, libc6-dev: the installed commands' C client (bpf_iptables/cli/client.c);
# python3-matplotlib: the benchmark's plots (bench/results/datapath.png).
PACKAGES=(python3-bpfcc linux-headers-amd64 iptables iproute2 python3-venv bpftool
          util-linux procps python3-numpy ipset gcc libc6-dev python3-matplotlib)
missing=()
for pkg in "${PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
    [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    log "Debian packages already installed"
fi

# --- 2. kernel header links for bcc -----------------------------------------
moddir="/lib/modules/$(uname -r)"
if [[ ! -e "$moddir/build" ]]; then
    # The newest installed Debian amd64 headers, whatever their version.
    arch_dir="$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)"
    if [[ -z "$arch_dir" ]]; then
        echo "setup.sh: no /usr/src/linux-headers-*-amd64 after installing linux-headers-amd64" >&2
        exit 1
    fi
    common_dir="${arch_dir%-amd64}-common"
    log "linking $moddir/build -> $arch_dir, source -> $common_dir"
    mkdir -p "$moddir"
    ln -sfn "$arch_dir" "$moddir/build"
    [[ -d "$common_dir" ]] && ln -sfn "$common_dir" "$moddir/source"
else
    log "kernel headers present at $moddir/build"
fi

# --- 3. bpffs ----------------------------------------------------------------
if ! mountpoint -q /sys/fs/bpf; then
    log "mounting bpffs at /sys/fs/bpf"
    mkdir -p /sys/fs/bpf
    mount -t bpf bpf /sys/fs/bpf
else
    log "bpffs already mounted"
fi
# The data path pins its programs and maps in a bpffs under /run, which every
# way of entering a namespace sees (ip netns exec hides /sys/fs/bpf); it must
# be mounted from the host's mount namespace, which is where we are.
if ! mountpoint -q /run/bpf-iptables/bpffs 2>/dev/null; then
    log "mounting bpffs at /run/bpf-iptables/bpffs (data-path pins)"
    mkdir -p /run/bpf-iptables/bpffs
    mount -t bpf bpf /run/bpf-iptables/bpffs
fi

# --- 4. virtual environment --------------------------------------------------
if [[ ! -x .venv/bin/python ]] || ! .venv/bin/python -c 'import sys' 2>/dev/null; then
    log "creating .venv from /usr/bin/python3 (with system site packages for bcc)"
    rm -rf .venv
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
log "installing the project and its test dependencies into .venv"
# compat mode: a plain path in a .pth file. The default (strict) editable
# install imports a finder (pathlib, re, fnmatch: ~9 ms) at every start of
# Python, before any command runs; short commands feel that.
.venv/bin/python -m pip install --disable-pip-version-check -q -e '.[test]' \
    --config-settings editable_mode=compat
# An editable install leaves no byte code, and where PYTHONDONTWRITEBYTECODE is
# set none is ever written: every bpf-iptables call would compile its modules
# again (about 60 ms of a 100 ms command). Compile them once, as a normal
# pip install does.
.venv/bin/python -m compileall -q bpf_iptables >/dev/null
# The installed bpf-iptables, -save and -restore: the C client, over pip's
# Python scripts (it forwards a command to the namespace's command server
# without starting Python, and runs the Python CLI beside it otherwise).
# Rebuilt at every run (pip just rewrote the scripts; it takes milliseconds);
# a failed build stops the setup rather than keep the slow scripts.
log "building the C client into .venv/bin (bpf-iptables, -save, -restore)"
.venv/bin/python -m bpf_iptables.cli.build_client .venv/bin
.venv/bin/python - <<'EOF'
import bcc, lark, pyroute2, pytest, hypothesis, iptc  # noqa: F401  (fails loudly if one is missing)
print("==> .venv imports bcc, lark, pyroute2, pytest, hypothesis and iptc")
# bcc compiles only with the kernel headers of step 2: prove it does.
bcc.BPF(text="int noop(void *ctx) { return 0; }")
print("==> bcc compiles a BPF program")
EOF

# The eBPF object cache (bpf_iptables/datapath/objcache.py): compile once what
# a first attach needs, and a first restore of the ClassBench 10k rule set
# when it is at hand, so those load without clang (a few seconds, here once).
log "filling the eBPF object cache (/var/cache/bpf-iptables/objects)"
RULES="${BPF_IPTABLES_SHARED_DIR:-$REPO/../shared}/rulesets/classbench-fw1-10k.rules"
.venv/bin/python -m bpf_iptables.datapath.warm $([[ -f $RULES ]] && echo "$RULES")

# --- 5. demo -----------------------------------------------------------------
bash "$REPO/scripts/demo.sh"
echo
bash "$REPO/scripts/demo-traffic.sh"
