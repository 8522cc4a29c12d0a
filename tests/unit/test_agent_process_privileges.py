"""shoal.agent.process.privileges: what a process task gets of init, capabilities,
sysctls and ulimits, and what is refused (applied for real in e2e/test_process_driver)."""

from __future__ import annotations

import resource

import pytest

from shoal.agent.exec.executor import TaskRejectedError
from shoal.agent.process.privileges import Privileges, privileges

EVERYTHING = (1 << 41) - 1
LAST_CAP = 40


def test_nothing_asked_nothing_done() -> None:
    assert privileges({"init": True}, 0, EVERYTHING, LAST_CAP) == Privileges()


def test_limits_sysctls_and_drops_as_the_shim_applies_them() -> None:
    got = privileges({"capDrop": ["NET_RAW", "CAP_CHOWN"],
                      "sysctls": {"net.core.somaxconn": 1024},
                      "ulimits": {"nofile": {"soft": 10, "hard": -1},
                                  "locks": {"soft": 1, "hard": 2}}}, 1000, EVERYTHING, LAST_CAP)
    assert got.drop_caps == [0, 13]
    assert got.sysctls == {"/proc/sys/net/core/somaxconn": "1024"} and not got.new_ipc
    assert got.rlimits == [(10, 1, 2), (resource.RLIMIT_NOFILE, 10, resource.RLIM_INFINITY)]
    assert privileges({"sysctls": {"fs.mqueue.msg_max": "20"}}, 0, EVERYTHING,
                      LAST_CAP).new_ipc  # an IPC parameter: the task gets its own IPC ns


def test_drop_all_keeps_only_what_is_added_and_what_the_kernel_knows() -> None:
    got = privileges({"capDrop": ["ALL"], "capAdd": ["chown", "KILL"]}, 0, EVERYTHING, 37)
    assert got.drop_caps == [n for n in range(38) if n not in (0, 5)]


def test_what_cannot_be_honoured_is_refused_with_the_reason() -> None:
    with pytest.raises(TaskRejectedError, match="cannot give capabilities to user 1000"):
        privileges({"capAdd": ["NET_ADMIN"]}, 1000, EVERYTHING, LAST_CAP)
    held = EVERYTHING & ~(1 << 24)  # an agent without CAP_SYS_RESOURCE
    with pytest.raises(TaskRejectedError, match="CAP_SYS_RESOURCE: this node's agent does "
                                                "not hold it itself"):
        privileges({"capAdd": ["SYS_RESOURCE", "CHOWN"]}, 0, held, LAST_CAP)
    assert privileges({"capAdd": ["ALL"]}, 0, held, LAST_CAP) == Privileges()
