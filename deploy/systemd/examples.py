"""Write (or ``--check``) the example units in this folder: what ``swctl init``/``join``
install on a manager with the default data dir, ``/var/lib/shoal``, and shoal installed
in ``/opt/shoal`` (a venv). They are for reading; the units a node runs are rendered by
``shoal/cli/units.py`` from the node's own data dir when it inits or joins, and this
script renders these through the same functions, so they cannot drift (the unit test
``tests/unit/test_deploy_systemd.py`` runs ``--check``).

    python deploy/systemd/examples.py          # rewrite the examples
    python deploy/systemd/examples.py --check  # exit 1 if they differ
"""

from __future__ import annotations

import sys
from pathlib import Path

from shoal.cli import cluster, init, nodeprocs, units
from shoal.join import datadir

HERE = Path(__file__).parent
PYTHON = "/opt/shoal/bin/python"
ETCD = "/usr/bin/etcd"
LAYOUT = datadir.Layout(datadir.DEFAULT)
CFG = datadir.NodeConfig(
    name="m1", role="manager", advertise_addr="10.0.0.1",
    endpoints=tuple(f"https://10.0.0.{i}:2379" for i in (1, 2, 3)), prefix="/shoal",
    join_addrs=("10.0.0.1:4243", "10.0.0.2:4243", "10.0.0.3:4243"))
REC = nodeprocs.StartRecord(systemd=True)


def examples() -> dict[str, str]:
    """Unit file name -> text."""
    member = init.etcd_member(LAYOUT, CFG, "m1=https://10.0.0.1:2380", "new")
    argvs = {units.ETCD: [ETCD, *member.command()[1:]]}
    for name in (units.MANAGER, units.AGENT, units.ROLE_WATCH):
        argvs[name] = [PYTHON, *nodeprocs.argv_for(LAYOUT, name, CFG, REC)[1:]]
    return {units.unit_name(LAYOUT.root, name): units.render(
        LAYOUT, name, argv, local_etcd=True, stop_grace=cluster.STOP_GRACE)
        for name, argv in argvs.items()}


def main(argv: list[str]) -> int:
    stale = []
    for name, text in examples().items():
        path = HERE / name
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale examples in {HERE}: {', '.join(stale)}; run "
              "python deploy/systemd/examples.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
