"""Reading manifests: ``-f FILE|DIR|-`` (``-R`` to recurse), multi-document YAML or JSON.

Everything that can go wrong before a document reaches validation is caught here and
reported with where it happened: a missing path, an empty directory, a YAML syntax
error (``file:line:column`` plus the offending line), a document that is not a mapping.
Documents are numbered from 1 in the order they appear in their file, counting empty
ones, so "document 3" is the third ``---`` section a user sees in an editor.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from shoal.cli.errors import ManifestError
from shoal.crds import nesting

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
STDIN = "-"


@dataclasses.dataclass
class Document:
    """One manifest document and where it came from."""

    source: str  # the path as the user wrote it (or found under a directory), "-" for stdin
    index: int  # 1-based position among the documents of ``source``
    data: dict[str, Any]
    item: int = 0  # 1-based position inside a ``kind: List`` document, 0 otherwise

    @property
    def where(self) -> str:
        """``file stack.yaml, document 2``: the location validation messages end with."""
        origin = "stdin" if self.source == STDIN else f"file {self.source}"
        text = f"{origin}, document {self.index}"
        if self.item:
            text += f", item {self.item}"
        return text


def manifest_paths(paths: Sequence[str], recursive: bool = False) -> list[str]:
    """Expand ``-f`` arguments: files as given, directories to their manifest files.

    Directory contents are sorted by name so applies are reproducible; ``-R`` descends
    into subdirectories, otherwise only the directory's own files count (as kubectl).
    """
    out: list[str] = []
    for raw in paths:
        if raw == STDIN:
            out.append(STDIN)
            continue
        path = Path(raw)
        if not path.exists():
            raise ManifestError(f'the path "{raw}" does not exist (check the -f argument)')
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found = sorted(p for p in path.glob(pattern)
                           if p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES)
            if not found:
                hint = "" if recursive else "; use -R to include subdirectories"
                raise ManifestError(f'no manifest files ({", ".join(MANIFEST_SUFFIXES)}) '
                                    f'in directory "{raw}"{hint}')
            out.extend(str(p) for p in found)
        else:
            out.append(raw)
    return out


def load(paths: Sequence[str], recursive: bool = False,
         stdin: TextIO | None = None) -> list[Document]:
    """Every non-empty document of every manifest under ``paths``, in order."""
    if not paths:
        raise ManifestError("no manifests given: pass -f FILE, -f DIR or -f - (stdin)")
    docs: list[Document] = []
    for source in manifest_paths(paths, recursive):
        docs.extend(parse(read_text(source, stdin), source))
    if not docs:
        raise ManifestError(f"no objects found in {', '.join(paths)} (the documents are empty)")
    return docs


def read_text(source: str, stdin: TextIO | None = None) -> str:
    if source == STDIN:
        return (stdin or sys.stdin).read()
    try:
        return Path(source).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{source}: not UTF-8 text (byte {exc.start}): is it a manifest?"
                            ) from None
    except OSError as exc:
        raise ManifestError(f"cannot read {source}: {exc.strerror or exc}") from None


def parse(text: str, source: str) -> list[Document]:
    """Split ``text`` into documents; YAML errors carry file, line and column."""
    docs: list[Document] = []
    index = 0
    try:
        for data in yaml.safe_load_all(text):
            index += 1
            if data is None:
                continue  # an empty section (a stray ---) is not an error
            trouble = nesting.problem(data)
            if trouble:
                raise ManifestError(f"{Document(source, index, {}).where}: {trouble}")
            docs.extend(_documents(data, source, index))
    except RecursionError:
        # PyYAML's composer recurses per level: it gives up before our own check can run.
        where = Document(source, index + 1, {}).where
        raise ManifestError(f"{where}: {nesting.TOO_DEEP}") from None
    except yaml.MarkedYAMLError as exc:
        raise ManifestError(_syntax_error(exc, text, source)) from None
    except yaml.YAMLError as exc:  # unmarked errors are rare (e.g. reader errors)
        raise ManifestError(f"{_display(source)}: invalid YAML: {exc}") from None
    return docs


def _documents(data: Any, source: str, index: int) -> Iterable[Document]:
    where = Document(source, index, {}).where
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: a manifest document must be a mapping with apiVersion, "
                            f"kind, metadata and spec, got {_type_name(data)}")
    if data.get("kind") == "List" and isinstance(data.get("items"), list):
        # What `swctl get -o yaml` prints for several objects; applying it back is common.
        for n, item in enumerate(data["items"], start=1):
            if not isinstance(item, dict):
                raise ManifestError(f"{where}, item {n}: a list item must be a mapping, got "
                                    f"{_type_name(item)}")
            yield Document(source, index, item, item=n)
        return
    yield Document(source, index, data)


def _type_name(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f'the string "{value[:40]}"'
    return f"{type(value).__name__} {value!r}"


def _display(source: str) -> str:
    return "<stdin>" if source == STDIN else source


def _syntax_error(exc: yaml.MarkedYAMLError, text: str, source: str) -> list[str]:
    """``file:line:col: problem`` followed by the offending line and a caret under it."""
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "invalid YAML"
    if mark is None:
        return [f"{_display(source)}: invalid YAML: {problem}"]
    line, column = mark.line + 1, mark.column + 1
    message = f"{_display(source)}:{line}:{column}: invalid YAML: {problem}"
    if exc.context and exc.context_mark is not None and exc.problem_mark is not None:
        ctx = exc.context_mark
        message += f" ({exc.context} at line {ctx.line + 1}, column {ctx.column + 1})"
    lines = [message]
    source_lines = text.splitlines()
    if 0 <= mark.line < len(source_lines):
        quoted = source_lines[mark.line]
        gutter = f"  {line} | "
        lines.append(f"{gutter}{quoted}")
        lines.append(" " * (len(gutter) + mark.column) + "^")
    return lines
