"""etcd access: typed CRUD with compare-and-swap, list+watch with resume, leases.

Everything above this layer talks to etcd only through :class:`shoal.store.client.Store`,
so the etcd client library (aetcd today) can be swapped without touching controllers.
"""
