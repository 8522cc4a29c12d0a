"""Joining machines into a cluster: the data dir, the join endpoint and its client, and
the manager-membership rules (quorum, MANAGER STATUS) that ``swctl init``/``join``/
``leave``/``node promote|demote`` apply. See docs/cluster.md."""
