"""Node networking: IPAM, VXLAN overlays, service load balancers and DNS.

Built by the agent on its own node with pyroute2 from what etcd says should exist;
never imports the controllers (they decide, this layer carries out).
"""
