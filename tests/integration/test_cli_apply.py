"""``swctl apply``: created/configured/unchanged, dry run, all-or-nothing, CRDs, chunking."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.crds import conditions, kinds, mountdigests
from shoal.store import client, etcd_server
from tests.integration.cli_support import Swctl, service


@pytest.fixture
def swctl(etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path) -> Swctl:
    return Swctl(etcd.url, prefix, tmp_path)


async def test_created_configured_unchanged_keeps_status(swctl: Swctl,
                                                         store: client.Store) -> None:
    path = swctl.write("stack.yaml", service("web", 3) + "---\n" + """\
        apiVersion: shoal.io/v1
        kind: Config
        metadata: {name: site}
        spec: {data: hello}
        """)
    first = swctl("apply", "-d", "-f", str(path))
    assert first.stdout.splitlines() == ["service/web created", "config/site created"]
    assert first.stderr == ""
    again = swctl("apply", "-d", "-f", str(path))
    assert again.stdout.splitlines() == ["service/web unchanged", "config/site unchanged"]

    # A controller reports status, and the rotation controller rolled the service (a
    # bump and its record): a later apply must change spec and keep all of that.
    info = kinds.Registry.builtin().lookup("services")
    live = await store.get(info, "web")
    conditions.set_condition(live, "Ready", True, "AllRunning")
    live.spec["forceUpdate"] = 1
    live.metadata.annotations[mountdigests.MOUNTED_DIGESTS] = '{"config/site":"d"}'
    await store.update(info, live)
    assert swctl("apply", "-d", "-f", str(path)).stdout.splitlines() == [
        "service/web unchanged", "config/site unchanged"]

    path.write_text(path.read_text().replace("replicas: 3", "replicas: 5"))
    changed = swctl("apply", "-d", "-f", str(path))
    assert changed.stdout.splitlines() == ["service/web configured", "config/site unchanged"]
    stored = await store.get(info, "web")
    assert stored.spec["replicas"] == 5
    assert stored.spec["mode"] == "replicated"  # defaults filled in by admission
    assert stored.metadata.generation == 3
    assert conditions.is_true(stored, "Ready")
    assert stored.spec["forceUpdate"] == 1
    assert stored.metadata.annotations[mountdigests.MOUNTED_DIGESTS] == '{"config/site":"d"}'


async def test_dry_run_writes_nothing(swctl: Swctl, store: client.Store) -> None:
    path = swctl.write("web.yaml", service("web", 2))
    out = swctl("apply", "--dry-run", "-f", str(path)).stdout
    assert out.splitlines() == ["service/web created (dry run)"]
    info = kinds.Registry.builtin().lookup("services")
    assert (await store.list(info))[0] == []
    swctl("apply", "-d", "-f", str(path))
    path.write_text(service("web", 4))
    out = swctl("apply", "--dry-run", "-f", str(path)).stdout
    assert out.splitlines() == ["service/web configured (dry run)"]
    assert (await store.get(info, "web")).spec["replicas"] == 2


def test_one_invalid_document_writes_nothing(swctl: Swctl) -> None:
    path = swctl.write("stack.yaml", service("api") + "---\n" + service("web", -1) + "---\n"
                       + service("db"))
    result = swctl("apply", "-f", str(path), expect=1)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert (f"error: spec.replicas: must be >= 0, got -1 (services/web, file {path}, "
            "document 2)") in lines
    assert lines[-1].startswith("error: nothing was written: 1 of 3 documents is invalid")
    assert swctl("get", "services", "-o", "name").stdout == ""


def test_yaml_syntax_error_names_file_line_and_column(swctl: Swctl) -> None:
    # Lines 1-8 are a valid service, 9 is ---, the mistake is on line 13, column 14.
    path = swctl.write("broken.yaml", service("web") + "---\nkind: Service\nmetadata:\n"
                       "  name: x\n  labels: app: x\n")
    result = swctl("apply", "-f", str(path), expect=1)
    first = result.stderr.splitlines()[0]
    assert first == (f"error: {path}:13:14: invalid YAML: mapping values are not allowed here")
    assert "  13 |   labels: app: x" in result.stderr  # the offending line is quoted
    assert swctl("get", "services", "-o", "name").stdout == ""


def test_crd_and_objects_of_its_kind_in_one_file(swctl: Swctl) -> None:
    path = swctl.write("website.yaml", """\
        apiVersion: example.com/v1
        kind: Website
        metadata: {name: blog, labels: {team: docs}}
        spec: {url: "https://blog.example.com"}
        ---
        apiVersion: apiextensions.k8s.io/v1
        kind: CustomResourceDefinition
        metadata: {name: websites.example.com}
        spec:
          group: example.com
          names: {kind: Website, plural: websites, singular: website, shortNames: [ws]}
          scope: Namespaced
          versions:
            - name: v1
              served: true
              storage: true
              additionalPrinterColumns:
                - {name: URL, type: string, jsonPath: .spec.url}
                - {name: Replicas, type: integer, jsonPath: .spec.replicas, priority: 1}
              schema:
                openAPIV3Schema:
                  type: object
                  properties:
                    spec:
                      type: object
                      required: [url]
                      properties:
                        url: {type: string}
                        replicas: {type: integer, default: 2, minimum: 1}
        """)
    out = swctl("apply", "-d", "-f", str(path)).stdout.splitlines()
    # The CRD is written first so its kind exists before any object of it.
    assert out == ["customresourcedefinition/websites.example.com created",
                   "website/blog created"]
    table = swctl("get", "ws").stdout.splitlines()
    assert table[0].split() == ["NAME", "URL", "AGE"]
    assert table[1].split()[:2] == ["blog", "https://blog.example.com"]
    wide = swctl("get", "website", "blog", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "URL", "REPLICAS", "AGE"]
    assert wide[1].split()[2] == "2"  # the CRD schema's default
    # An invalid object of the new kind is checked against the CRD's schema.
    bad = swctl.write("bad.yaml", "apiVersion: example.com/v1\nkind: Website\n"
                      "metadata: {name: x}\nspec: {url: u, replicas: 0}\n")
    err = swctl("apply", "-f", str(bad), expect=1).stderr
    assert "spec.replicas: must be >= 1, got 0 (websites/x, file" in err


def test_directory_recursive_stdin_and_namespace(swctl: Swctl) -> None:
    swctl.write("app/a.yaml", service("a"))
    swctl.write("app/more/b.yml", service("b"))
    swctl.write("app/notes.txt", "not a manifest")
    flat = swctl("apply", "--dry-run", "-f", str(swctl.cwd / "app")).stdout
    assert flat.splitlines() == ["service/a created (dry run)"]
    deep = swctl("apply", "-d", "-f", "app", "-R", "-n", "staging").stdout
    assert deep.splitlines() == ["service/a created", "service/b created"]
    piped = swctl("apply", "-d", "-f", "-", input=service("c")).stdout
    assert piped.splitlines() == ["service/c created"]
    assert swctl("get", "svc", "-n", "staging", "-o", "name").stdout.split() == [
        "service/a", "service/b"]
    assert swctl("get", "svc", "-o", "name").stdout.split() == ["service/c"]
    clash = swctl.write("ns.yaml", service("d").replace("name: d", "name: d\n  namespace: prod"))
    err = swctl("apply", "-f", str(clash), "-n", "staging", expect=1).stderr
    assert 'namespace "prod" does not match -n staging' in err


def test_large_apply_is_chunked_into_transactions(swctl: Swctl) -> None:
    docs = [f"apiVersion: shoal.io/v1\nkind: Config\nmetadata: {{name: c{i:03d}}}\n"
            f"spec: {{data: v{i}}}\n" for i in range(300)]
    path = swctl.write("many.yaml", "---\n".join(docs))
    out = swctl("apply", "-d", "-f", str(path)).stdout.splitlines()
    assert len(out) == 300 and all(line.endswith(" created") for line in out)
    names = swctl("get", "configs", "-o", "name").stdout.split()
    assert len(names) == 300
    docs[150] = docs[150].replace("v150", "changed")
    path.write_text("---\n".join(docs))
    out = swctl("apply", "-d", "-f", str(path)).stdout.splitlines()
    assert out.count("config/c150 configured") == 1
    assert sum(line.endswith(" unchanged") for line in out) == 299
