"""What every verb needs: the global options and a connected store.

Kept apart from ``main`` so verb modules do not import the argument parser (and so the
parser can import the verbs without a cycle).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path

from shoal.cli import errors
from shoal.crds import kinds, names, resource, sealed
from shoal.join import datadir
from shoal.pki.bundle import Bundle
from shoal.store import client, kindsync, maintenance
from shoal.store import errors as store_errors

DEFAULT_ETCD = "http://127.0.0.1:2379"
DEFAULT_PREFIX = "/shoal"


def default_state_dir() -> Path:
    """Where ``swctl up`` keeps a cluster (and its keyring) unless told otherwise."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "shoal"


def default_keyring() -> Path:
    """The keyring when neither ``--keyring`` nor ``$SHOAL_KEYRING`` names one."""
    return default_state_dir() / sealed.KEYRING_FILE


def keyring_path(flag: str | None) -> Path:
    """``--keyring``, else ``$SHOAL_KEYRING``, else :func:`default_keyring`."""
    return Path(flag or os.environ.get(sealed.KEYRING_ENV) or default_keyring())


# swctl's global flags that take a value (main._global_flags): skipped when finding the
# verb, left out of a recorded command line, passed on to `swctl agent`.
GLOBAL_VALUE_FLAGS = ("--etcd", "--prefix", "--request-timeout", "--keyring", "--etcd-ca",
                      "--etcd-cert", "--etcd-key", "--data-dir")


@dataclasses.dataclass(frozen=True)
class GlobalOptions:
    """``--etcd``, ``--prefix``, ``--request-timeout`` and ``--keyring`` after flags and
    environment."""

    etcd: str = DEFAULT_ETCD
    prefix: str = DEFAULT_PREFIX
    request_timeout: float = 5.0
    #: The cluster's keyring file (read only when a Secret value is sealed or opened).
    keyring: Path | None = None
    #: CA and client certificate for https etcd endpoints (--etcd-ca/cert/key).
    tls: Bundle | None = None
    #: This machine's node data dir (``init``/``join``; docs/cluster.md).
    data_dir: Path = datadir.DEFAULT

    @classmethod
    def resolve(cls, etcd: str | None, prefix: str | None,
                request_timeout: float | None, keyring: str | None = None,
                etcd_ca: str | None = None, etcd_cert: str | None = None,
                etcd_key: str | None = None, data_dir: str | None = None) -> GlobalOptions:
        # Flag beats environment beats default, as with kubectl's KUBECONFIG.
        try:
            tls = Bundle.resolve(etcd_ca, etcd_cert, etcd_key)
        except ValueError as exc:
            raise errors.CliError(str(exc)) from None
        opts = cls(
            tls=tls,
            etcd=etcd or os.environ.get("SHOAL_ETCD") or DEFAULT_ETCD,
            prefix=prefix or os.environ.get("SHOAL_PREFIX") or DEFAULT_PREFIX,
            request_timeout=request_timeout if request_timeout is not None else 5.0,
            keyring=keyring_path(keyring),
            data_dir=datadir.resolve(data_dir),
        )
        if etcd or os.environ.get("SHOAL_ETCD"):
            return opts
        return from_data_dir(opts, keyring is None and not os.environ.get(sealed.KEYRING_ENV),
                             prefix is None and not os.environ.get("SHOAL_PREFIX"))


def from_data_dir(opts: GlobalOptions, keyring: bool, prefix: bool) -> GlobalOptions:
    """``opts`` pointed at the cluster of this machine's data dir, when it has one: its
    etcd endpoints, its certificate (a manager's root one, else the node's) unless
    one was given, and where ``keyring``/``prefix`` say they were not given, its keyring
    and key prefix. Unchanged without a data dir: ``swctl up`` clusters work as before."""
    layout = datadir.Layout(opts.data_dir)
    if not layout.exists():
        return opts
    try:
        cfg = datadir.load_node(layout)
    except datadir.DataDirError as exc:
        raise errors.CliError(str(exc)) from None
    name = "root" if layout.cert("root").exists() else "node"
    tls = opts.tls or Bundle(layout.ca_cert, layout.cert(name), layout.key(name))
    return dataclasses.replace(
        opts, etcd=",".join(cfg.endpoints), tls=tls,
        prefix=cfg.prefix if prefix else opts.prefix,
        keyring=layout.keyring if keyring and layout.keyring.exists() else opts.keyring)


@contextlib.asynccontextmanager
async def open_store(opts: GlobalOptions) -> AsyncIterator[client.Store]:
    """A store connected to ``opts.etcd``, closed on exit.

    Connecting proves etcd answers, so an unreachable etcd fails here with the store's
    UnavailableError (which names the URL and how to start one) rather than mid-command.
    """
    try:
        store = await client.Store.connect(opts.etcd, prefix=opts.prefix,
                                           timeout=opts.request_timeout, tls=opts.tls)
    except ValueError as exc:  # a malformed URL, or https without a certificate
        raise errors.CliError(f"{exc} (from --etcd or SHOAL_ETCD)") from None
    try:
        yield store
    except store_errors.NoSpaceError as exc:
        raise errors.CliError(await _no_space_lines(store, exc)) from None
    finally:
        await store.close()


async def _no_space_lines(store: client.Store, exc: store_errors.NoSpaceError) -> list[str]:
    """A write refused for want of space: which members, how big, what to do. Every
    swctl write is one transaction (a batch), so nothing of the refused one was written."""
    try:
        where = await maintenance.alarm_report(store.etcd, maintenance.quota_if_known())
    except store_errors.StoreError:
        where = ""
    return [f"etcd is out of space and refused the write, which changed nothing "
            f"({where or exc.detail})", f"  {store_errors.NO_SPACE_REMEDY}"]


async def registry_of(store: client.Store) -> kinds.Registry:
    """The kinds this cluster serves: built-ins plus the CRDs stored in it."""
    return await kindsync.load_registry(store)


def namespace_for(info: kinds.KindInfo, namespace: str | None) -> str | None:
    """The namespace an object of ``info`` lives in: None for cluster-scoped kinds."""
    if not info.namespaced:
        return None
    return namespace or resource.DEFAULT_NAMESPACE


def namespace_arg(text: str) -> str:
    """``-n/--namespace``: a stack name by the rule ``metadata.namespace`` is admitted by
    (``my_app.v1``), checked before anything is read or written so a name no object can
    have is refused, not answered with "No resources found" or used in an etcd key."""
    message = names.namespace_error(text)
    if message:
        raise argparse.ArgumentTypeError(message)
    return text


def split_refs(kind: str, names: list[str]) -> tuple[str, list[str]]:
    """``service/hyperf_v1.0`` (kubectl's TYPE/NAME) as ("service", ["hyperf_v1.0"]);
    ``KIND NAME...`` unchanged. Split at the first ``/`` only: neither kind names nor
    Docker's object names hold one, while names may hold dots (``hyperf_v1.0``) and kinds
    too (``widgets.example.com``), so a dot never separates anything here."""
    if "/" not in kind:
        return kind, names
    refs = [kind, *names]
    kinds_given = {ref.partition("/")[0].lower() for ref in refs}
    parsed = [ref.partition("/")[2] for ref in refs]
    if any("/" not in ref for ref in refs) or len(kinds_given) != 1 or not all(parsed):
        raise errors.CliError(f'cannot read "{" ".join(refs)}": give TYPE/NAME... of one '
                              "kind (service/web service/api) or TYPE NAME... (service web)")
    return kind.partition("/")[0], parsed


def ref_of(info: kinds.KindInfo, obj: resource.Resource) -> str:
    """``service/web``: how kubectl names an object in its one-line results."""
    return f"{info.kind.lower()}/{obj.name}"


def key_ref(info: kinds.KindInfo, name: str, namespace: str | None) -> str:
    """``services/default/web``: the unambiguous name used in error messages."""
    ns = namespace_for(info, namespace)
    return f"{info.plural}/{ns}/{name}" if ns else f"{info.plural}/{name}"
