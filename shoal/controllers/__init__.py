"""Built-in controllers: one independent, leader-elected loop per concern (DESIGN.md).

Each controller keeps its decision logic in pure, synchronous functions over
``shoal.crds.resource.Resource`` objects (no I/O, no clock) so that the logic can be
tested exhaustively and benchmarked in memory; the loop that feeds those functions from
informers and commits their results in etcd transactions is a thin layer on top.
"""
