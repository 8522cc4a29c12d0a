"""Node networking: VXLAN overlays, service load balancers and DNS.

Built by the agent on its own node with pyroute2 from what etcd says should exist;
never imports the controllers (they decide, this layer carries out; IPAM is theirs,
in ``shoal.controllers.allocator.ipam``) nor the agent (which drives it).
"""

# Every module here may open sockets in other namespaces through pyroute2: make its
# forked helpers safe once, for the whole package (see forksafe's docstring).
from shoal.net import forksafe as _forksafe  # noqa: F401
