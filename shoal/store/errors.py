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


class TLSRefusedError(UnavailableError):
    """The TLS handshake with etcd failed: a certificate problem, not a network one."""

    def __init__(self, url: str, detail: str) -> None:
        StoreError.__init__(self, f"etcd at {url} refused the TLS connection: {detail}")
        self.url = url


class LimitError(StoreError):
    """etcd refused a request over one of its configured limits; retrying cannot help,
    the message names the etcd flag to raise."""

    def __init__(self, url: str, detail: str) -> None:
        self.url = url
        super().__init__(f"etcd at {url} refused the request: {detail}")


#: Words every NoSpaceError's message holds, and the event the store logs when etcd
#: accepts writes again: how ``shoal.runtime.logging`` keeps one line per outage.
NO_SPACE_MARK = "is out of space and refuses writes"
SPACE_BACK_EVENT = "etcd accepts writes again"
#: What to do about it: one wording for the error and for swctl's message.
NO_SPACE_REMEDY = (
    "Shoal's controller-manager compacts and defragments etcd and disarms the alarm by "
    "itself within seconds. If it stays (`swctl etcd status`), run `swctl etcd "
    "recover-space`, or by hand: etcdctl compact REVISION, etcdctl defrag --cluster, "
    "etcdctl alarm disarm; if the data itself outgrew the quota, delete objects or raise "
    "--quota-backend-bytes on every member")


class NoSpaceError(UnavailableError):
    """etcd is out of space (its NOSPACE alarm is raised): it refuses every write that
    would add data -- puts, transactions with a put, lease grants -- until its history is
    compacted, its members defragmented and the alarm disarmed. Reads and deletes still
    work. An :class:`UnavailableError` for callers that retry writes later (the state
    passes), but never retried by the store itself: no member accepts the write either.
    """

    def __init__(self, url: str, detail: str) -> None:
        StoreError.__init__(
            self,
            f"etcd at {url} {NO_SPACE_MARK} ({detail}). {NO_SPACE_REMEDY}")
        self.url = url
        self.detail = detail


class PermissionDeniedError(StoreError):
    """etcd's RBAC refused the request to the certificate's user; retrying cannot help."""

    def __init__(self, user: str, what: str, cert: str = "") -> None:
        self.user = user
        source = f" (the CN of {cert})" if cert else ""
        super().__init__(
            f'etcd denied {what} to user "{user}"{source}: its roles do not allow it. '
            "A node's certificate may read and write only what that node needs "
            "(docs/security.md); run the command with an admin certificate "
            "(--etcd-cert root.crt) if it is an operator's")


class UnknownUserError(PermissionDeniedError):
    """With auth on, etcd refuses every request of a certificate whose CN is no user."""

    def __init__(self, user: str, cert: str = "") -> None:
        self.user = user
        source = f"the CN of the client certificate {cert}" if cert else \
            "the CN of the client certificate"
        StoreError.__init__(
            self,
            f'etcd has no user "{user}" ({source}), so it refuses every request made with '
            "that certificate. If this node was removed (`swctl node rm`), join it again "
            "with `swctl join`; otherwise create the user on a manager (etcdctl user add "
            f'"{user}" --no-password, then grant it a role) or use a certificate issued for '
            "an existing user")
