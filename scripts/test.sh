#!/usr/bin/env bash
# The whole test suite: install, then ruff, mypy --strict, the import contracts and pytest.
# Every service a test needs (etcd, later dockerd) is started by the tests themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$PWD/.venv/bin:$PATH"

echo "==> ruff"
ruff check shoal tests bench deploy
echo "==> mypy --strict"
mypy --strict shoal
echo "==> import contracts (import-linter, [tool.importlinter] in pyproject.toml)"
lint-imports --no-cache
# pytest in two passes. The first runs every test not marked `alone` on SHOAL_TEST_WORKERS
# xdist workers (3 by default: most tests wait on etcd, dockerd, agents and swctl
# processes rather than the CPU, hence more workers than cores). --dist loadfile keeps a
# file's tests on one worker, so a module-scoped cluster is started once, not per worker.
# The second pass runs the `alone` tests one at a time with nothing beside them: those
# that read the whole host's state or hold hard deadlines (tests/README.md).
workers=${SHOAL_TEST_WORKERS:-3}
set +e
echo "==> pytest, $workers workers (tests not marked alone)"
python -m pytest -p no:cacheprovider -q --durations=15 -n "$workers" --dist loadfile \
  -m "not alone" "$@"
rc1=$?
echo "==> pytest, serial (tests marked alone)"
python -m pytest -p no:cacheprovider -q --durations=5 -m alone "$@"
rc2=$?
set -e
# pytest exits 5 when it collected nothing: that is a broken suite, not a pass -- unless
# the other pass ran tests (a file given on the command line may hold no alone test).
if [ $rc1 -eq 5 ] && [ $rc2 -eq 5 ]; then exit 5; fi
[ $rc1 -eq 5 ] && rc1=0
[ $rc2 -eq 5 ] && rc2=0
exit $(( rc1 > rc2 ? rc1 : rc2 ))
