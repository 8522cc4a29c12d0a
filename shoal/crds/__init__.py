"""Resource kinds: the envelope, the kind registry, schemas, defaults and validation.

This layer is pure data: it never talks to etcd, docker or the network, so every
other layer can depend on it and unit tests can exercise it without services.
"""
