"""swctl: the kubectl-style command line of Shoal.

One module per verb (apply, get, describe, delete, diff, cluster) plus the shared parts
(manifest loading, printers, error reporting). The CLI sits at the top of the layering:
it may import every other layer and nothing imports it, except the tests.
"""
