"""The test image ``shoal/busybox``, built from the host's Debian ``busybox`` package.

No image registry is reachable where Shoal is developed and tested, so the image every
example, test and benchmark runs is made locally: a root filesystem tarball assembled in
memory and handed to dockerd's import endpoint (what ``docker import`` does). It holds
Debian's dynamically linked ``busybox`` together with exactly the shared libraries and
dynamic loader ``ldd`` names for it, each at the path the loader looks for, with the
host's symlinks replicated (so a merged-``/usr`` host gives a merged-``/usr`` image),
plus one symlink per busybox applet, ``/etc/passwd``/``/etc/group`` with ``root`` and
``nobody``, ``/tmp``, ``/etc/hostname`` and ``/www/index.html`` for ``httpd -h /www``.

The module is split in two on purpose: :func:`plan_rootfs` decides the file list from
its inputs alone (the host's symlinks come in through a ``readlink`` callback), so a unit
test pins the layout without docker or a particular host; the rest reads the host and
talks to dockerd. Building is idempotent: an image already tagged ``name`` is left alone.
"""

from __future__ import annotations

import dataclasses
import io
import os
import posixpath
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import structlog

log = structlog.get_logger(__name__)

TEST_IMAGE = "shoal/busybox"
TEST_IMAGE_LABEL = "shoal.io/test-image"
# Bumped whenever the layout below changes, so machines holding an older build get the
# new one from ensure_test_image instead of keeping a stale image for ever.
TEST_IMAGE_VERSION = "2"
# A variant of the test image (``ensure_variant_image``) says which it is here, in a
# file ``httpd -h /www`` serves and in a label, so its layer and id differ from the base.
VARIANT_FILE = "/www/variant"
VARIANT_LABEL = "shoal.io/test-image-variant"

# Applets the examples, tests and benchmarks rely on; the build fails loudly if the
# host's busybox lacks one rather than producing an image that breaks later.
REQUIRED_APPLETS: tuple[str, ...] = (
    "sh", "httpd", "nc", "nslookup", "hostname", "sleep", "cat", "echo", "ls", "ps",
    "kill", "env", "wget", "true", "false", "grep", "mkdir", "date", "id", "top", "ip",
)

IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IMAGE_CHANGES: tuple[str, ...] = (
    f"ENV PATH={IMAGE_PATH}",
    'CMD ["sh"]',
    f"LABEL {TEST_IMAGE_LABEL}={TEST_IMAGE_VERSION}",
)

_PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
_GROUP = "root:x:0:\nnobody:x:65534:\nnogroup:x:65534:\n"
_INDEX_HTML = (
    "<!DOCTYPE html>\n<html><head><title>shoal</title></head>"
    "<body><h1>Hello from shoal/busybox</h1></body></html>\n"
)
# Fixed metadata makes the tarball byte-for-byte reproducible on one host, so the
# imported layer has the same digest every time it is rebuilt.
_MTIME = 946684800  # 2000-01-01


class ImageBuildError(Exception):
    """The test image cannot be built on this host (no busybox, a required applet missing)."""


@dataclasses.dataclass(frozen=True)
class RootfsEntry:
    """One member of the rootfs tarball. Paths are absolute inside the image."""

    path: str
    kind: str  # "dir" | "file" | "symlink"
    mode: int = 0o755
    source: str | None = None  # host file whose bytes a "file" entry copies
    data: bytes | None = None  # inline content of a "file" entry
    target: str | None = None  # where a "symlink" points (kept verbatim, as on the host)


def parse_ldd(output: str) -> list[str]:
    """Absolute paths of the shared objects in ``ldd`` output, loader included.

    ``linux-vdso.so.1`` has no file (the kernel maps it), and "not found" lines have no
    path; both are skipped: the caller checks that the binary's needs are satisfied.
    """
    paths: list[str] = []
    for raw in output.splitlines():
        line = raw.strip()
        if "=>" in line:
            line = line.split("=>", 1)[1].strip()
        path = line.split(" (", 1)[0].strip()
        if path.startswith("/") and path not in paths:
            paths.append(path)
    return paths


def _host_readlink(path: str) -> str | None:
    return os.readlink(path) if os.path.islink(path) else None


class _Plan:
    """Entries keyed by path, parents before children, no path twice."""

    def __init__(self) -> None:
        self.entries: dict[str, RootfsEntry] = {}

    def add(self, entry: RootfsEntry) -> None:
        self.ensure_parents(entry.path)
        self.entries.setdefault(entry.path, entry)

    def ensure_parents(self, path: str) -> None:
        parent = posixpath.dirname(path)
        chain: list[str] = []
        while parent not in ("/", ""):
            chain.append(parent)
            parent = posixpath.dirname(parent)
        for directory in reversed(chain):
            self.entries.setdefault(directory, RootfsEntry(directory, "dir"))

    def copy_host_path(self, path: str, readlink: Callable[[str], str | None]) -> str:
        """Add ``path`` as the host has it: every symlink on the way, then the file.

        Returns the real path the file was added under. Symlinks keep their targets
        verbatim (absolute ones resolve against the image root at run time, which is
        exactly what the loader needs), so ``/lib64/ld-linux-x86-64.so.2`` on a
        merged-/usr host becomes the same chain of links ending in one real file.
        """
        for _ in range(40):  # the kernel's own symlink limit
            resolved = self._walk(path, readlink)
            if resolved is None:
                return path
            path = resolved
        raise ImageBuildError(f"too many levels of symbolic links resolving {path}")

    def _walk(self, path: str, readlink: Callable[[str], str | None]) -> str | None:
        parts = [p for p in posixpath.normpath(path).split("/") if p]
        current = ""
        for index, part in enumerate(parts):
            current = f"{current}/{part}"
            target = readlink(current)
            if target is not None:
                self.add(RootfsEntry(current, "symlink", 0o777, target=target))
                base = posixpath.dirname(current)
                joined = posixpath.join(base, target)  # absolute targets win in join
                rest = parts[index + 1:]
                return posixpath.normpath(posixpath.join(joined, *rest))
            if index == len(parts) - 1:
                self.add(RootfsEntry(current, "file", 0o755, source=current))
        return None


def plan_rootfs(busybox: str, libraries: Sequence[str], applets: Iterable[str],
                readlink: Callable[[str], str | None] = _host_readlink,
                variant: str | None = None) -> list[RootfsEntry]:
    """The image's file list: busybox and its libraries at their host paths, applets;
    with ``variant``, also ``/www/variant`` holding it (:func:`ensure_variant_image`).

    ``busybox`` and ``libraries`` are host paths (the latter as ``ldd`` names them);
    ``applets`` are the names ``busybox --list`` prints. Missing required applets raise
    :class:`ImageBuildError`.
    """
    applet_set = {a for a in applets if a and "/" not in a and a != "busybox"}
    missing = [a for a in REQUIRED_APPLETS if a not in applet_set]
    if missing:
        raise ImageBuildError(f"{busybox} lacks the applets {', '.join(missing)}")

    plan = _Plan()
    for directory in ("/etc", "/proc", "/sys", "/dev", "/root", "/tmp", "/www",
                      "/var", "/var/run", "/home"):
        mode = 0o1777 if directory == "/tmp" else 0o700 if directory == "/root" else 0o755
        plan.add(RootfsEntry(directory, "dir", mode))
    real_busybox = plan.copy_host_path(busybox, readlink)
    for library in libraries:
        plan.copy_host_path(library, readlink)

    bindir = posixpath.dirname(real_busybox)
    for applet in sorted(applet_set):
        plan.add(RootfsEntry(posixpath.join(bindir, applet), "symlink", 0o777,
                             target="busybox"))
    # Whatever directory busybox lives in, the usual bin directories must reach the
    # applets: Docker runs CMD-SHELL health checks as /bin/sh, scripts say /bin/sh too.
    for directory in ("/bin", "/sbin", "/usr/bin", "/usr/sbin"):
        if directory != bindir and directory not in plan.entries:
            target = posixpath.relpath(bindir, posixpath.dirname(directory))
            plan.add(RootfsEntry(directory, "symlink", 0o777, target=target))

    text_files = {
        "/etc/passwd": _PASSWD,
        "/etc/group": _GROUP,
        "/etc/hostname": "shoal\n",
        # dockerd writes no /etc/hosts for Shoal's containers (they have no libnetwork
        # sandbox), so the image brings the loopback names itself.
        "/etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        "/etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
        "/www/index.html": _INDEX_HTML,
    }
    if variant is not None:
        text_files[VARIANT_FILE] = f"{variant}\n"
    for path, text in text_files.items():
        plan.add(RootfsEntry(path, "file", 0o644, data=text.encode()))
    return list(plan.entries.values())


def build_rootfs_tar(entries: Sequence[RootfsEntry]) -> bytes:
    """The tarball of ``entries`` (reading host files for ``source`` entries)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.path.lstrip("/"))
            info.mtime = _MTIME
            info.mode = entry.mode
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry.kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = entry.target or ""
                tar.addfile(info)
            else:
                if entry.data is not None:
                    content = entry.data
                else:
                    assert entry.source is not None
                    with open(entry.source, "rb") as f:
                        content = f.read()
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def host_busybox() -> tuple[str, list[str], list[str]]:
    """This host's busybox: its path, the libraries ``ldd`` names, its applet names."""
    busybox = shutil.which("busybox") or ("/bin/busybox" if os.path.exists("/bin/busybox")
                                          else None)
    if busybox is None:
        raise ImageBuildError("busybox is not installed (apt-get install busybox)")
    try:
        applets = subprocess.run([busybox, "--list"], check=True, capture_output=True,
                                 text=True, timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError) as exc:
        raise ImageBuildError(f"{busybox} --list failed: {exc}") from exc
    ldd = subprocess.run(["ldd", busybox], capture_output=True, text=True, timeout=30)
    if "not found" in ldd.stdout:
        raise ImageBuildError(f"{busybox} has unresolved libraries:\n{ldd.stdout}")
    # "not a dynamic executable" (a static busybox) leaves nothing to copy, which is fine.
    return busybox, parse_ldd(ldd.stdout), applets


def build_test_image_tar(variant: str | None = None) -> bytes:
    """The rootfs tarball of the test image, from this host's busybox; with ``variant``,
    plus ``/www/variant`` holding it (see :func:`ensure_variant_image`)."""
    busybox, libraries, applets = host_busybox()
    return build_rootfs_tar(plan_rootfs(busybox, libraries, applets, variant=variant))


def split_image_ref(ref: str) -> tuple[str, str | None]:
    """``repo[:tag][@digest]`` -> (repository, tag or digest); None means "latest".

    A colon only separates a tag in the last path segment (``localhost:5000/img`` has
    none); a digest reference keeps its digest as the "tag" the pull API expects.
    """
    if "@" in ref:
        repository, digest = ref.split("@", 1)
        return repository, digest
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        repository, tag = ref.rsplit(":", 1)
        return repository, tag
    return ref, None


def _api(client: Any) -> Any:
    """The low-level APIClient of a DockerClient, or the APIClient itself."""
    return getattr(client, "api", client)


def image_version(client: Any, name: str) -> str | None:
    """The test-image version label of ``name``; "" for another image, None if absent."""
    import docker.errors

    try:
        info = _api(client).inspect_image(name)
    except docker.errors.ImageNotFound:
        return None
    labels = (info.get("Config") or {}).get("Labels") or {}
    return str(labels.get(TEST_IMAGE_LABEL, ""))


def ensure_test_image(client: Any, name: str = TEST_IMAGE) -> bool:
    """Build and import ``name`` unless dockerd has this version of it; True if it built.

    ``client`` is a ``docker.DockerClient`` or ``docker.APIClient``. Blocking: call it
    through ``asyncio.to_thread`` from async code. Two callers racing both import; the
    tag ends on one of two identical images, which is harmless. An older build is
    replaced (containers still running it keep their image).
    """
    if image_version(client, name) == TEST_IMAGE_VERSION:
        return False
    repository, tag = split_image_ref(name)
    data = build_test_image_tar()
    result = _api(client).import_image_from_data(
        data, repository=repository, tag=tag or "latest", changes=list(IMAGE_CHANGES))
    log.info("test image built", image=name, bytes=len(data), result=str(result)[:200])
    if image_version(client, name) != TEST_IMAGE_VERSION:
        raise ImageBuildError(f"dockerd imported the rootfs but has no image {name}: {result}")
    return True


def ensure_variant_image(client: Any, name: str, variant: str) -> bool:
    """``name``: the test image plus ``/www/variant`` holding ``variant``; True if built.

    Rolling-update tests and benchmarks need two images that really differ (another
    layer, another id) with no registry to pull from: ``shoal/busybox:v1`` and
    ``shoal/busybox:v2`` built here. Idempotent like :func:`ensure_test_image`.
    """
    import docker.errors

    try:
        info = _api(client).inspect_image(name)
        labels = (info.get("Config") or {}).get("Labels") or {}
        if (labels.get(TEST_IMAGE_LABEL) == TEST_IMAGE_VERSION
                and labels.get(VARIANT_LABEL) == variant):
            return False
    except docker.errors.ImageNotFound:
        pass
    repository, tag = split_image_ref(name)
    data = build_test_image_tar(variant)
    _api(client).import_image_from_data(
        data, repository=repository, tag=tag or "latest",
        changes=[*IMAGE_CHANGES, f"LABEL {VARIANT_LABEL}={variant}"])
    log.info("test image variant built", image=name, variant=variant, bytes=len(data))
    return True


def ensure_test_image_at(docker_url: str | None = None, name: str = TEST_IMAGE) -> bool:
    """:func:`ensure_test_image` for callers without a client (``swctl up``, scripts).

    ``docker_url`` defaults to ``$DOCKER_HOST`` or the standard socket.
    """
    import docker

    from shoal.agent.docker.dockerd import docker_url as default_url

    client = docker.APIClient(base_url=docker_url or default_url(), version="auto")
    try:
        return ensure_test_image(client, name)
    finally:
        client.close()


def main() -> None:
    """``python -m shoal.agent.docker.image``: make sure dockerd runs and has the test image."""
    from shoal.agent.docker.dockerd import ensure_dockerd

    url = ensure_dockerd()
    built = ensure_test_image_at(url)
    print(f"{TEST_IMAGE}: {'built' if built else 'already present'} on {url}")


if __name__ == "__main__":
    main()
