"""The test image's file list, decided without docker or a particular host."""

from __future__ import annotations

import io
import tarfile

import pytest

from shoal.agent.docker.image import (
    REQUIRED_APPLETS,
    VARIANT_FILE,
    ImageBuildError,
    RootfsEntry,
    build_rootfs_tar,
    parse_ldd,
    plan_rootfs,
    split_image_ref,
)

LDD = """\
\tlinux-vdso.so.1 (0x00007ffd5a3f2000)
\tlibresolv.so.2 => /lib/x86_64-linux-gnu/libresolv.so.2 (0x00007f5d4943d000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f5d4925b000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f5d4951f000)
"""
# Debian 12 is merged-/usr: /lib and /lib64 are links into /usr, the loader a link too.
MERGED_USR = {
    "/lib": "usr/lib",
    "/lib64": "usr/lib64",
    "/usr/lib64/ld-linux-x86-64.so.2": "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
}
APPLETS = [*REQUIRED_APPLETS, "[", "awk", "vi"]


def by_path(entries: list[RootfsEntry]) -> dict[str, RootfsEntry]:
    return {e.path: e for e in entries}


def test_parse_ldd_keeps_libraries_and_loader() -> None:
    assert parse_ldd(LDD) == ["/lib/x86_64-linux-gnu/libresolv.so.2",
                              "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"]
    assert parse_ldd("\tnot a dynamic executable\n") == []
    assert parse_ldd("\tlibfoo.so.1 => not found\n") == []


def test_merged_usr_layout_replicates_the_hosts_links() -> None:
    entries = plan_rootfs("/usr/bin/busybox", parse_ldd(LDD), APPLETS, MERGED_USR.get)
    files = by_path(entries)
    assert files["/usr/bin/busybox"] == RootfsEntry("/usr/bin/busybox", "file", 0o755,
                                                    source="/usr/bin/busybox")
    assert files["/lib"].kind == "symlink" and files["/lib"].target == "usr/lib"
    assert files["/lib64"].target == "usr/lib64"
    assert files["/usr/lib64/ld-linux-x86-64.so.2"].target == \
        "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    for real in ("libc.so.6", "libresolv.so.2", "ld-linux-x86-64.so.2"):
        entry = files[f"/usr/lib/x86_64-linux-gnu/{real}"]
        assert entry.kind == "file" and entry.source == entry.path
    # every applet is a link next to busybox; the usual bin directories reach them
    for applet in APPLETS:
        assert files[f"/usr/bin/{applet}"] == RootfsEntry(f"/usr/bin/{applet}", "symlink",
                                                          0o777, target="busybox")
    assert files["/bin"].target == "usr/bin" and files["/sbin"].target == "usr/bin"
    assert files["/usr/sbin"].target == "bin"
    # what a container needs besides binaries
    assert files["/tmp"].mode == 0o1777 and files["/root"].mode == 0o700
    passwd = files["/etc/passwd"].data or b""
    assert passwd.startswith(b"root:x:0:0:") and b"\nnobody:x:65534:65534:" in passwd
    group = files["/etc/group"].data or b""
    assert group.startswith(b"root:x:0:") and b"nobody:x:65534:" in group
    assert files["/etc/hostname"].data == b"shoal\n"
    assert (files["/etc/hosts"].data or b"").startswith(b"127.0.0.1\tlocalhost\n")
    assert b"<h1>" in (files["/www/index.html"].data or b"")


def test_entries_are_unique_and_parents_come_first() -> None:
    entries = plan_rootfs("/usr/bin/busybox", parse_ldd(LDD), APPLETS, MERGED_USR.get)
    paths = [e.path for e in entries]
    assert len(paths) == len(set(paths))
    seen: set[str] = set()
    for entry in entries:
        parent = entry.path.rsplit("/", 1)[0]
        assert parent == "" or parent in seen, f"{entry.path} before {parent}"
        assert seen.isdisjoint({entry.path})
        seen.add(entry.path)
    # nothing is placed below a symlinked directory: it would shadow the link
    links = {e.path for e in entries if e.kind == "symlink"}
    for path in paths:
        assert not any(path.startswith(f"{link}/") for link in links), path


def test_classic_layout_puts_applets_in_bin() -> None:
    entries = by_path(plan_rootfs("/bin/busybox", ["/lib/libc.so.6"], APPLETS, {}.get))
    assert entries["/bin/busybox"].kind == "file"
    assert entries["/bin/sh"].target == "busybox"
    assert entries["/usr/bin"].target == "../bin" and entries["/sbin"].target == "bin"
    assert entries["/lib/libc.so.6"].kind == "file"


def test_a_variant_serves_its_name_and_only_a_variant_has_the_file() -> None:
    base = by_path(plan_rootfs("/bin/busybox", ["/lib/libc.so.6"], APPLETS, {}.get))
    v2 = by_path(plan_rootfs("/bin/busybox", ["/lib/libc.so.6"], APPLETS, {}.get,
                             variant="v2"))
    assert VARIANT_FILE not in base
    assert v2[VARIANT_FILE].data == b"v2\n" and VARIANT_FILE.startswith("/www/")
    assert set(v2) - set(base) == {VARIANT_FILE}


def test_missing_required_applets_fail_loudly() -> None:
    with pytest.raises(ImageBuildError, match="httpd, nc"):
        plan_rootfs("/usr/bin/busybox", [], [a for a in APPLETS if a not in ("httpd", "nc")],
                    {}.get)


def test_symlink_loops_are_an_error() -> None:
    with pytest.raises(ImageBuildError, match="symbolic links"):
        plan_rootfs("/usr/bin/busybox", ["/a/lib.so"], APPLETS, {"/a": "/b", "/b": "/a"}.get)


def test_tarball_is_reproducible_and_faithful() -> None:
    entries = [RootfsEntry("/etc", "dir"), RootfsEntry("/tmp", "dir", 0o1777),
               RootfsEntry("/etc/hostname", "file", 0o644, data=b"shoal\n"),
               RootfsEntry("/bin", "symlink", 0o777, target="usr/bin")]
    data = build_rootfs_tar(entries)
    assert build_rootfs_tar(entries) == data
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert list(members) == ["etc", "tmp", "etc/hostname", "bin"]
        assert members["tmp"].isdir() and members["tmp"].mode == 0o1777
        assert members["bin"].issym() and members["bin"].linkname == "usr/bin"
        assert members["etc/hostname"].uid == 0
        extracted = tar.extractfile("etc/hostname")
        assert extracted is not None and extracted.read() == b"shoal\n"


@pytest.mark.parametrize(("ref", "expected"), [
    ("shoal/busybox", ("shoal/busybox", None)),
    ("shoal/busybox:v1", ("shoal/busybox", "v1")),
    ("localhost:5000/img", ("localhost:5000/img", None)),
    ("localhost:5000/img:2", ("localhost:5000/img", "2")),
    ("img@sha256:abc", ("img", "sha256:abc")),
])
def test_split_image_ref(ref: str, expected: tuple[str, str | None]) -> None:
    assert split_image_ref(ref) == expected
