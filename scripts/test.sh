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
echo "==> pytest"
set +e
python -m pytest -p no:cacheprovider -q --durations=15 "$@"
rc=$?
set -e
# pytest exits 5 when it collected nothing: that is a broken suite, not a pass.
exit $rc
