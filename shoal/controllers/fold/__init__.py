"""The fold controller: nodes' task reports copied into Task.status (see controller.py)."""
