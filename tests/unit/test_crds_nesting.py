"""crds.nesting: documents too deep, too big or circular for the steps after parsing."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from shoal.cli import manifests
from shoal.cli.errors import ManifestError
from shoal.crds import nesting


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


def test_ordinary_documents_pass() -> None:
    assert nesting.problem({"spec": {"template": {"env": {"A": "1"}}}}) is None
    assert nesting.problem(nested(nesting.MAX_DEPTH)) is None


def test_too_deep_too_big_and_circular_are_named() -> None:
    assert nesting.problem(nested(nesting.MAX_DEPTH + 1)) == nesting.TOO_DEEP
    shared: Any = ["x"] * 100
    for _ in range(4):
        shared = [shared] * 100  # 100**5 values through shared lists, as aliases make
    assert nesting.problem({"spec": shared}) == nesting.TOO_BIG
    loop: list[Any] = []
    loop.append(loop)
    assert nesting.problem({"spec": {"x": loop}}) == nesting.CIRCULAR


@pytest.mark.parametrize("text, message", [
    ("spec: " + "[" * 5000 + "]" * 5000, nesting.TOO_DEEP),
    ("a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdef", "bcdefg",
                                                                       strict=True)),
     nesting.TOO_BIG),
    ("spec: &s {x: *s}", nesting.CIRCULAR),
])
def test_manifest_reader_refuses_them_naming_the_document(text: str, message: str) -> None:
    """Fuzzing found it: deep nesting was a RecursionError (in PyYAML itself), an alias bomb
    took minutes in admission, a self-containing document recursed for ever."""
    with pytest.raises(ManifestError) as err:
        manifests.parse(f"kind: Service\n---\n{text}\n", "m.yaml")
    assert str(err.value) == f"file m.yaml, document 2: {message}"


def test_yaml_really_builds_such_documents() -> None:
    """The cases above are what PyYAML hands over, not something it refuses itself."""
    doc = yaml.safe_load("spec: &s {x: *s}")
    assert doc["spec"]["x"] is doc["spec"]
