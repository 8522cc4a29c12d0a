"""The store's error vocabulary: what callers branch on, with messages users can act on."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of everything the store raises on purpose."""


class UnavailableError(StoreError):
    """etcd could not be reached; the message names the URL and how to get one running."""

    def __init__(self, url: str, detail: str) -> None:
        self.url = url
        super().__init__(
            f"cannot reach etcd at {url} ({detail}). Start a local cluster with `swctl up`, "
            "or point at a running etcd with --etcd URL or SHOAL_ETCD=URL")


class NotFoundError(StoreError):
    def __init__(self, ref: str) -> None:
        self.ref = ref
        super().__init__(f"{ref} not found")


class CorruptObjectError(StoreError):
    """The stored value is not a resource; delete it with ``swctl delete`` and re-apply."""

    def __init__(self, ref: str, detail: str) -> None:
        self.ref = ref
        super().__init__(f"{ref} is stored in a form Shoal cannot read ({detail}); "
                         f"delete it and apply it again")


class AlreadyExistsError(StoreError):
    def __init__(self, ref: str) -> None:
        self.ref = ref
        super().__init__(f"{ref} already exists")


class ConflictError(StoreError):
    """A compare-and-swap lost: someone else wrote first. Re-read and try again."""

    def __init__(self, ref: str, detail: str = "") -> None:
        self.ref = ref
        super().__init__(f"conflict writing {ref}: {detail or 'the object was modified'}; "
                         "re-read it and retry")


class FencedError(ConflictError):
    """A fenced write was refused because the writer no longer holds its leader lease."""

    def __init__(self, ref: str, fence_key: str) -> None:
        super().__init__(ref, f"leadership lease on {fence_key} is no longer held")
