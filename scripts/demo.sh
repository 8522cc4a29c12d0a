#!/usr/bin/env bash
# The main job: install, bring up a local cluster (etcd started for you, plus the
# controller-manager and a node agent), deploy the example stack and show it converge.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$PWD/.venv/bin:$PATH"

swctl up -d
swctl apply -f deploy/examples/stack.yaml
swctl get services -A
swctl get all -n demo 2>/dev/null || true
echo
echo "The cluster keeps running. Try: swctl get svc -n demo -w   |   swctl down"
