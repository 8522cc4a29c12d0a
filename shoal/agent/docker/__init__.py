"""The ``docker`` executor driver: a task as a container, through dockerd.

``driver`` implements the executor contract over the docker SDK; ``dockerd`` finds (or
starts) the daemon; ``image`` builds the small test image the examples use. Imported
only by an agent running ``--runtime docker`` and by ``swctl up``/``down``: the docker
SDK is a cost every other process should not pay.
"""
