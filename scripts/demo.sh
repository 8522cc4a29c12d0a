#!/usr/bin/env bash
# The main job: install, bring up a local cluster (etcd started for you, plus the
# controller-manager and a node agent), deploy the example stack and show it converge.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$PWD/.venv/bin:$PATH"

swctl up -d
# A compose file, exactly as `docker stack deploy -c ... demo` takes it: a web service
# serving a config, an api holding a secret, their network; progress until converged.
swctl stack deploy -c deploy/examples/docker-stack.yml demo
swctl stack services demo
echo
# The stack publishes web's port 8080 through the routing mesh: ask it, as a browser would.
python3 - <<'PY'
import sys, time, urllib.request
deadline = time.monotonic() + 30
while True:
    try:
        with urllib.request.urlopen("http://127.0.0.1:8080/", timeout=2) as reply:
            print(f"http://localhost:8080 answers: HTTP {reply.status}, "
                  f"{len(reply.read())} bytes from a web task")
            break
    except OSError as exc:
        if time.monotonic() > deadline:
            sys.exit(f"http://localhost:8080 does not answer: {exc}")
        time.sleep(0.5)
PY
echo "Open http://localhost:8080 -- the cluster keeps running. Try: swctl stack ps demo   |   swctl get svc -n demo -w   |   swctl stack rm demo   |   swctl down"
