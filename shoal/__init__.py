"""Shoal: a Docker-Swarm-style container orchestrator built as an operator framework on etcd.

The package is layered; imports only point down the stack::

    crds <- store <- runtime <- {controllers, agent, net} <- cli

``tests/unit/test_layering.py`` enforces the direction.
"""
