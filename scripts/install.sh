#!/usr/bin/env bash
# Install everything Shoal needs on a fresh Debian machine (run as root), idempotently:
# system packages from apt only when something is missing, the project into .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need_apt+=(etcd-client)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
command -v git >/dev/null 2>&1 || need_apt+=(git)
# dockerd runs the docker driver's containers (the tests start it themselves); the test
# image shoal/busybox is made from Debian's busybox, as no registry is reachable.
command -v dockerd >/dev/null 2>&1 || [ -x /usr/sbin/dockerd ] || need_apt+=(docker.io)
command -v busybox >/dev/null 2>&1 || need_apt+=(busybox)
# The IPVS load balancer is tested under user-mode-linux (this kernel has no IPVS):
# linux.uml and its modules, kmod's modprobe to load them, a C compiler for the small
# XSAVE shim tests/e2e/uml.py preloads into linux.uml, and iptables-legacy, the netfilter
# companion the UML kernel supports (it has no nf_tables for the ip family).
[ -x /usr/bin/linux.uml ] || need_apt+=(user-mode-linux)
command -v modprobe >/dev/null 2>&1 || [ -x /sbin/modprobe ] || need_apt+=(kmod)
command -v cc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
command -v iptables-legacy-restore >/dev/null 2>&1 || [ -x /usr/sbin/iptables-legacy-restore ] \
  || need_apt+=(iptables)
# The dashboard's tests drive a real browser: Debian's chromium through chromium-driver
# (Selenium), headless.
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
[ -x /usr/bin/chromedriver ] || need_apt+=(chromium-driver)
# systemd: systemd-analyze verifies the rendered units; the e2e units test runs a systemd
# user manager in a namespace (unshare/nsenter are util-linux's).
command -v systemd-analyze >/dev/null 2>&1 && [ -x /lib/systemd/systemd ] || need_apt+=(systemd)
command -v nsenter >/dev/null 2>&1 || need_apt+=(util-linux)
# The chaos harness steps processes' wall clocks with libfaketime (bench/chaoslib/clocks.py),
# preloaded with a small shim it compiles with the C compiler above.
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || [ -e /usr/lib/faketime/libfaketime.so.1 ] \
  || need_apt+=(libfaketime)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv python3-pip)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# Debian starts etcd as a service on install; Shoal runs its own, so stop that one
# where systemd is present (it would hold port 2379).
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  systemctl disable --now etcd >/dev/null 2>&1 || true
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  echo "==> pip install -e .[dev]"
  .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/pip install -q -e '.[dev]' 2>&1 | grep -v -e '^WARNING: Location' -e 'pip as the .root. user' || true
  .venv/bin/python -c 'import shoal, aetcd, structlog, rich' 
  rm -f .venv/.installed-*
  touch "$stamp"
fi
