"""The cluster's public-key infrastructure: its CA, the certificates it issues, join tokens.

Pure functions over the ``cryptography`` package and files: no etcd, no network, no other
Shoal package, so every layer (the store's TLS transport, the join endpoint, the agent's
renewal) can use it. What is issued, under which names and for how long is in docs/pki.md.
"""
