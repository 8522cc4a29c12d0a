"""Output formats of ``swctl get`` (table, wide, yaml, json, name) and the table renderer.

Tables are rendered with rich, but always into plain aligned text first: on a terminal
the header is bold, and when stdout is a pipe the output is exactly kubectl's shape
(columns separated by three spaces, no colour, no wrapping), so scripts can parse it.
Columns come from the kind's ``additionalPrinterColumns`` (simple JSONPath such as
``.spec.replicas``); a small built-in table covers built-in kinds whose schema has none.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

from shoal.cli import console
from shoal.crds import kinds, resource

NONE = "<none>"
FORMATS = ("table", "wide", "yaml", "json", "name")


@dataclasses.dataclass(frozen=True)
class Column:
    """One table column: a header and a JSONPath into the object's manifest form."""

    name: str
    json_path: str
    type: str = "string"
    priority: int = 0

    @property
    def header(self) -> str:
        return self.name.upper()


# Used only when a built-in kind's schema declares no printer columns (the schemas are
# the source of truth; this keeps `get` useful if one is ever shipped without them).
_FALLBACK_COLUMNS: dict[str, tuple[Column, ...]] = {
    "Service": (Column("Mode", ".spec.mode"), Column("Replicas", ".spec.replicas", "integer"),
                Column("Image", ".spec.template.image")),
    "Task": (Column("Service", ".spec.serviceName"), Column("Node", ".spec.nodeName"),
             Column("Desired", ".spec.desiredState"), Column("State", ".status.state")),
    "Node": (Column("Status", ".status.state"), Column("Availability", ".spec.availability"),
             Column("Role", ".spec.role")),
    "Network": (Column("Driver", ".spec.driver"), Column("Subnet", ".status.subnet")),
    "Event": (Column("Type", ".spec.type"), Column("Reason", ".spec.reason"),
              Column("Object", ".spec.involvedObject.name"), Column("Message", ".spec.message")),
}


def columns_for(info: kinds.KindInfo, wide: bool = False) -> list[Column]:
    """The kind-specific columns between NAME and AGE (priority > 0 only when ``wide``)."""
    declared = [Column(str(c.get("name", "")), str(c.get("jsonPath", "")),
                       str(c.get("type", "string")), int(c.get("priority", 0) or 0))
                for c in info.printer_columns if c.get("name") and c.get("jsonPath")]
    if not declared:
        declared = list(_FALLBACK_COLUMNS.get(info.kind, ()))
    out = []
    for col in declared:
        # AGE is always the last column, computed from creationTimestamp; a declared
        # "Age" column would duplicate it.
        if _normalise_path(col.json_path) == ".metadata.creationTimestamp":
            continue
        if col.priority > 0 and not wide:
            continue
        out.append(col)
    return out


# --- JSONPath (the simple subset CRDs use for printer columns) ---

_SEGMENT = re.compile(r"\.((?:\\.|[^.\[\]\\])+)|\[(\d+|\*)\]|\['([^']*)'\]|\[\"([^\"]*)\"\]")


def _normalise_path(path: str) -> str:
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1].strip()
    if path.startswith("$"):
        path = path[1:]
    return path


def jsonpath(data: Any, path: str) -> Any:
    """Evaluate ``.a.b[0].c`` (also ``{...}``, ``['x.y']`` and ``\\.`` escapes) on ``data``.

    Returns None when any step is missing; ``[*]`` collects a list.
    """
    path = _normalise_path(path)
    values: list[Any] = [data]
    pos = 0
    while pos < len(path):
        m = _SEGMENT.match(path, pos)
        if m is None:
            raise ValueError(f'unsupported JSONPath "{path}" (at "{path[pos:]}"): use simple '
                             "paths such as .spec.replicas or .status.conditions[0].type")
        pos = m.end()
        key, index, quoted1, quoted2 = m.groups()
        nxt: list[Any] = []
        for value in values:
            if key is not None or quoted1 is not None or quoted2 is not None:
                name = key.replace("\\.", ".") if key is not None else (quoted1 or quoted2)
                if isinstance(value, dict) and name in value:
                    nxt.append(value[name])
            elif index == "*":
                if isinstance(value, list):
                    nxt.extend(value)
            elif isinstance(value, list) and int(index) < len(value):
                nxt.append(value[int(index)])
        values = nxt
        if not values:
            return None
    if "[*]" in path:
        return values
    return values[0] if values else None


# --- cell formatting ---

def parse_time(stamp: object) -> datetime.datetime | None:
    """The time in an RFC 3339 stamp; None for anything else (a hand-written object in
    etcd may hold any JSON where a stamp belongs, and a listing must still print)."""
    if not stamp or not isinstance(stamp, str):
        return None
    try:
        return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.UTC)
    except ValueError:
        try:
            return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            return None


def human_duration(seconds: float) -> str:
    """kubectl's AGE: ``45s``, ``3m20s``, ``47m``, ``5h10m``, ``30h``, ``3d4h``, ``200d``."""
    if seconds < -1:
        return "<invalid>"
    s = max(0, int(seconds))
    minutes, hours, days = s // 60, s // 3600, s // 86400
    if s < 120:
        return f"{s}s"
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    years = days // 365
    if years < 8:
        return f"{years}y{days % 365}d" if days % 365 else f"{years}y"
    return f"{years}y"


def age(stamp: object, now: datetime.datetime | None = None) -> str:
    when = parse_time(stamp)
    if when is None:
        return NONE
    now = now or datetime.datetime.now(datetime.UTC)
    return human_duration((now - when).total_seconds())


def cell(value: Any, type_: str = "string", now: datetime.datetime | None = None) -> str:
    if value is None or value == "" or value == [] or value == {}:
        return NONE
    if type_ == "date" and isinstance(value, str):
        return age(value, now)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(cell(v, "string", now) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


# --- tables ---

def render_table(headers: Sequence[str], rows: Iterable[Sequence[str]], *,
                 color: bool = False, show_header: bool = True,
                 min_widths: Sequence[int] | None = None, indent: int = 0,
                 ) -> tuple[str, list[int]]:
    """Aligned columns (three spaces apart), trailing blanks stripped.

    Returns the text and the column widths used, so a later row (``get -w``) can be
    printed aligned with a table printed earlier by passing them back as ``min_widths``.
    """
    table = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 3, 0, 0),
                  show_header=show_header, header_style="bold" if color else None)
    rows = [list(r) for r in rows]
    widths = [len(h) if show_header else 0 for h in headers]
    for row in rows:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    if min_widths:
        widths = [max(w, m) for w, m in zip(widths, min_widths, strict=False)]
    for header, width in zip(headers, widths, strict=True):
        table.add_column(Text(header), no_wrap=True, overflow="ignore", min_width=width)
    for row in rows:
        # Text, not str: a cell value like "[x]" must never be read as rich markup.
        table.add_row(*(Text(v) for v in row))
    buf = io.StringIO()
    # Wide enough never to wrap; colour only when the caller writes to a terminal.
    console = Console(file=buf, width=1_000_000, color_system="standard" if color else None,
                      force_terminal=color, highlight=False, soft_wrap=False)
    console.print(table)
    pad = " " * indent
    text = "\n".join(pad + line.rstrip() for line in buf.getvalue().splitlines())
    return text, widths


#: Computes one cell from the object instead of the column's JSONPath (``get services``
#: shows REPLICAS as running/desired, counted from the tasks, which no field holds).
CellOverride = Callable[[resource.Resource], str]


class TablePrinter:
    """Rows of one kind as ``get`` prints them, remembering widths for ``get -w``."""

    def __init__(self, info: kinds.KindInfo, wide: bool = False,
                 all_namespaces: bool = False, color: bool = False,
                 qualify: bool = False,
                 overrides: Mapping[str, CellOverride] | None = None,
                 extra: Sequence[tuple[str, CellOverride]] = ()) -> None:
        self.info = info
        self.overrides = dict(overrides or {})  # by column header
        # Computed columns after the kind's own, before AGE (``service ls``'s PORTS).
        self.extra = list(extra)
        self.qualify = qualify  # NAME as kind/name, when several kinds share the output
        self.columns = columns_for(info, wide)
        self.with_namespace = all_namespaces and info.namespaced
        self.color = color
        self.widths: list[int] | None = None
        self.header_printed = False

    @property
    def headers(self) -> list[str]:
        head = ["NAMESPACE"] if self.with_namespace else []
        return [*head, "NAME", *(c.header for c in self.columns),
                *(header for header, _ in self.extra), "AGE"]

    def row(self, obj: resource.Resource, now: datetime.datetime | None = None) -> list[str]:
        now = now or datetime.datetime.now(datetime.UTC)
        data = obj.to_dict()
        head = [obj.namespace or NONE] if self.with_namespace else []
        name = name_of(self.info, obj) if self.qualify else obj.name
        return [*head, name,
                *(self.overrides[c.header](obj) if c.header in self.overrides
                  else cell(jsonpath(data, c.json_path), c.type, now) for c in self.columns),
                *(compute(obj) for _, compute in self.extra),
                age(obj.metadata.creationTimestamp, now)]

    def render(self, objs: Sequence[resource.Resource]) -> str:
        """The table for ``objs``; the header only the first time something is printed."""
        if not objs:
            return ""
        now = datetime.datetime.now(datetime.UTC)
        text, self.widths = render_table(
            self.headers, [self.row(o, now) for o in objs], color=self.color,
            show_header=not self.header_printed, min_widths=self.widths)
        self.header_printed = True
        return text


# --- structured formats ---

def list_document(objs: Sequence[resource.Resource]) -> dict[str, Any]:
    return {"apiVersion": resource.API_VERSION, "kind": "List",
            "items": [o.to_dict() for o in objs]}


def to_json(data: Any) -> str:
    return json.dumps(data, indent=4, ensure_ascii=False)


def to_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True,
                          width=1_000_000).rstrip("\n")


def name_of(info: kinds.KindInfo, obj: resource.Resource) -> str:
    return f"{info.kind.lower()}/{obj.name}"


def format_objects(info: kinds.KindInfo, objs: Sequence[resource.Resource], output: str,
                   single: bool, printer: TablePrinter | None = None) -> str:
    """``objs`` in ``output`` format; ``single`` prints one object instead of a List."""
    if output == "json":
        return to_json(objs[0].to_dict() if single else list_document(objs))
    if output == "yaml":
        return to_yaml(objs[0].to_dict() if single else list_document(objs))
    if output == "name":
        return "\n".join(name_of(info, o) for o in objs)
    if printer is None:
        printer = TablePrinter(info, wide=output == "wide")
    return printer.render(objs)


def print_inspected(objs: Sequence[resource.Resource], output: str) -> None:
    """``inspect`` output: one object as itself, several as a JSON list or YAML documents
    (the shape ``docker inspect`` users expect)."""
    if output == "json":
        data: Any = objs[0].to_dict() if len(objs) == 1 else [o.to_dict() for o in objs]
        console.out(to_json(data))
    else:
        console.out("\n---\n".join(to_yaml(o.to_dict()) for o in objs))
