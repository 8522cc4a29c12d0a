"""Resource kinds: the envelope, the kind registry, schemas, defaults and admission.

This layer is pure data: it never talks to etcd, docker or the network, so every
other layer can depend on it and unit tests can exercise it without services. It is also
the one home of the rules every layer must read the same way: admission (``admission``,
``openapi``, ``semantics``), the placement-constraint grammar (``constraints``) and the
reading of a task template (``template``).
"""
