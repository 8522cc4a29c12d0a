"""Which keys a compose v3.x file may hold at each minor version, and which ``stack deploy``
ignores, warns about or refuses.

Docker validates a file against the JSON schema of its own version (an unknown key is
refused: ``Additional property X is not allowed``), so a key introduced in 3.7 is refused in
a 3.3 file. Rather than ship ten schemas, Shoal records for every mapping the keys it takes
and the minor version that introduced each one (``since``); the loader walks the file
against this table. Types are checked where the converter relies on them.
"""

# Every mapping Docker checks, as {key: the 3.x minor version that introduced it}.
_ALWAYS = 0
SINCE: dict[str, dict[str, int]] = {
    "top": {"version": 0, "services": 0, "networks": 0, "volumes": 0, "secrets": 1,
            "configs": 3},
    "service": {k: _ALWAYS for k in (
        "build", "cap_add", "cap_drop", "cgroup_parent", "command", "container_name",
        "depends_on", "deploy", "devices", "dns", "dns_search", "domainname", "entrypoint",
        "env_file", "environment", "expose", "external_links", "extra_hosts", "healthcheck",
        "hostname", "image", "ipc", "labels", "links", "logging", "mac_address",
        "network_mode", "networks", "pid", "ports", "privileged", "read_only", "restart",
        "security_opt", "shm_size", "stdin_open", "stop_grace_period", "stop_signal",
        "sysctls", "tmpfs", "tty", "ulimits", "user", "userns_mode", "volumes", "working_dir",
    )} | {"secrets": 1, "configs": 3, "credential_spec": 3, "isolation": 5, "init": 7,
          "cgroupns_mode": 9},
    "deploy": {"mode": 0, "replicas": 0, "labels": 0, "update_config": 0, "resources": 0,
               "restart_policy": 0, "placement": 0, "endpoint_mode": 2, "rollback_config": 7},
    "update_config": {"parallelism": 0, "delay": 0, "failure_action": 0, "monitor": 0,
                      "max_failure_ratio": 0, "order": 4},
    "rollback_config": {"parallelism": 7, "delay": 7, "failure_action": 7, "monitor": 7,
                        "max_failure_ratio": 7, "order": 7},
    "restart_policy": {"condition": 0, "delay": 0, "max_attempts": 0, "window": 0},
    "placement": {"constraints": 0, "preferences": 3, "max_replicas_per_node": 8},
    "preference": {"spread": 3},
    "resources": {"limits": 0, "reservations": 0},
    "limits": {"cpus": 0, "memory": 0, "pids": 9},
    "reservations": {"cpus": 0, "memory": 0, "generic_resources": 5},
    "healthcheck": {"disable": 0, "interval": 0, "retries": 0, "test": 0, "timeout": 0,
                    "start_period": 4},
    "port": {"mode": 2, "target": 2, "published": 2, "protocol": 2},
    "mount": {"type": 2, "source": 2, "target": 2, "read_only": 2, "consistency": 2,
              "bind": 2, "volume": 2, "tmpfs": 6},
    "network": {"driver": 0, "driver_opts": 0, "ipam": 0, "external": 0, "internal": 0,
                "labels": 0, "attachable": 2, "name": 5},
    "service_network": {"aliases": 0, "ipv4_address": 0, "ipv6_address": 0},
    "file_ref": {"source": 1, "target": 1, "uid": 1, "gid": 1, "mode": 1},
    "ipam": {"driver": 0, "config": 0},
    "ipam_config": {"subnet": 0},
    "external": {"name": 0},
    "volume": {"driver": 0, "driver_opts": 0, "external": 0, "labels": 0, "name": 4},
    "secret": {"file": 1, "external": 1, "labels": 1, "name": 5, "driver": 8,
               "driver_opts": 8, "template_driver": 8},
    "config": {"file": 3, "external": 3, "labels": 3, "name": 5, "template_driver": 8},
}

# Where ``x-`` extension keys are allowed: at the top from 3.4, inside these from 3.7.
X_TOP_SINCE = 4
X_NESTED_SINCE = 7
X_NESTED = frozenset({"service", "network", "volume", "secret", "config"})

# Valid compose, meaningless to a swarm service: Docker warns and carries on.
UNSUPPORTED = ("build", "cgroupns_mode", "cgroup_parent", "devices", "domainname",
               "external_links", "ipc", "links", "mac_address", "network_mode", "pid",
               "privileged", "restart", "security_opt", "shm_size", "userns_mode")

# Removed from v3 but harmless: Docker warns with the reason.
DEPRECATED = {
    "container_name": "Setting the container name is not supported.",
    "expose": "Exposing ports is unnecessary - services on the same network can access "
    "each other's containers on any port.",
}

# Refused outright by the stack loader, with Docker's reason (checked before interpolation).
FORBIDDEN = {
    "extends": "Support for `extends` is not implemented yet.",
    "volume_driver": "Instead of setting the volume driver on the service, define a volume "
    "using the top-level `volumes` option and specify the driver there.",
    "volumes_from": "To share a volume between services, define it using the top-level "
    "`volumes` option and reference it from each service that shares it using the "
    "service-level `volumes` option.",
    "cpu_quota": "Set resource limits using deploy.resources",
    "cpu_shares": "Set resource limits using deploy.resources",
    "cpuset": "Set resource limits using deploy.resources",
    "mem_limit": "Set resource limits using deploy.resources",
    "memswap_limit": "Set resource limits using deploy.resources",
}

# Scalars the schema types, below a service: "duration" is a Go duration string (``1m30s``,
# ``500ms``, ``0``; a bare ``10`` is refused, as Docker refuses it), "string" a string,
# "integer"/"number" a number (after casting an interpolated value).
SCALARS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("stop_grace_period",), "duration"),
    (("healthcheck", "interval"), "duration"),
    (("healthcheck", "timeout"), "duration"),
    (("healthcheck", "start_period"), "duration"),
    (("healthcheck", "retries"), "number"),
    (("deploy", "update_config", "delay"), "duration"),
    (("deploy", "update_config", "monitor"), "duration"),
    (("deploy", "update_config", "parallelism"), "integer"),
    (("deploy", "rollback_config", "delay"), "duration"),
    (("deploy", "rollback_config", "monitor"), "duration"),
    (("deploy", "rollback_config", "parallelism"), "integer"),
    (("deploy", "restart_policy", "delay"), "duration"),
    (("deploy", "restart_policy", "window"), "duration"),
    (("deploy", "restart_policy", "max_attempts"), "integer"),
    (("deploy", "restart_policy", "condition"), "string"),
    (("deploy", "resources", "limits", "cpus"), "string"),
    (("deploy", "resources", "limits", "memory"), "string"),
    (("deploy", "resources", "reservations", "cpus"), "string"),
    (("deploy", "resources", "reservations", "memory"), "string"),
    (("deploy", "placement", "max_replicas_per_node"), "integer"),
    (("deploy", "mode"), "string"),
    (("deploy", "endpoint_mode"), "string"),
)
