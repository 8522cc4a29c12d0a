"""Which keys a compose v3 file may hold, and which ``stack deploy`` ignores.

Docker validates a file against its JSON schema (an unknown key is refused: ``Additional
property X is not allowed``) and then warns about keys valid in compose but meaningless to
a swarm (``Ignoring unsupported options: build``). Shoal keeps the union of the 3.x schemas
here, as data, so the loader's checks read as a table rather than as code.
"""

TOP_LEVEL = frozenset({"version", "services", "networks", "volumes", "secrets", "configs"})

SERVICE = frozenset({
    "build", "cap_add", "cap_drop", "cgroup_parent", "command", "configs", "container_name",
    "credential_spec", "depends_on", "deploy", "devices", "dns", "dns_search", "domainname",
    "entrypoint", "env_file", "environment", "expose", "external_links", "extra_hosts",
    "healthcheck", "hostname", "image", "init", "ipc", "isolation", "labels", "links",
    "logging", "mac_address", "network_mode", "networks", "pid", "ports", "privileged",
    "read_only", "restart", "secrets", "security_opt", "shm_size", "stdin_open",
    "stop_grace_period", "stop_signal", "sysctls", "tmpfs", "tty", "ulimits", "user",
    "userns_mode", "volumes", "working_dir",
})

# Valid compose, meaningless to a swarm service: Docker warns and carries on.
IGNORED = frozenset({
    "build", "cap_add", "cap_drop", "cgroup_parent", "devices", "domainname",
    "external_links", "ipc", "links", "mac_address", "network_mode", "pid", "privileged",
    "restart", "security_opt", "shm_size", "userns_mode", "container_name",
})
# Docker 20.10 reports these among the unsupported options only when set; cap_add/cap_drop
# became supported in 20.10 and are passed on, so they are not warned about.
IGNORED_WARNED = IGNORED - {"cap_add", "cap_drop"}

# Refused outright by the stack loader, with Docker's reason.
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

DEPLOY = frozenset({
    "mode", "endpoint_mode", "replicas", "labels", "rollback_config", "update_config",
    "resources", "restart_policy", "placement", "max_replicas_per_node",
})
UPDATE = frozenset({"parallelism", "delay", "failure_action", "monitor", "max_failure_ratio",
                    "order"})
RESTART = frozenset({"condition", "delay", "max_attempts", "window"})
PLACEMENT = frozenset({"constraints", "preferences", "max_replicas_per_node"})
RESOURCES = frozenset({"limits", "reservations"})
RESOURCE = frozenset({"cpus", "memory", "pids", "generic_resources"})
HEALTHCHECK = frozenset({"disable", "interval", "retries", "test", "timeout", "start_period"})

NETWORK = frozenset({"name", "driver", "driver_opts", "ipam", "external", "internal",
                     "attachable", "labels"})
VOLUME = frozenset({"name", "driver", "driver_opts", "external", "labels"})
SECRET = frozenset({"name", "file", "external", "labels", "driver", "driver_opts",
                    "template_driver"})
CONFIG = frozenset({"name", "file", "external", "labels", "template_driver"})
