"""Compose files through ``stack convert``/``stack deploy``'s loader, converter and
admission: the corpus's stack files, mutated, come out as manifests or as a clear
``ComposeError`` naming the file — never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given, settings

from tests.fuzz import strategies, surfaces


@settings(settings.get_profile("fuzz"), max_examples=300)
@given(strategies.compose_file())
def test_mutated_corpus_files_convert_or_are_refused_clearly(tmp_path_factory: Any,
                                                             data: Any) -> None:
    work = Path(tmp_path_factory.mktemp("compose", numbered=True))
    verdict = surfaces.compose_convert(data, work)
    assert not verdict.bad, verdict.detail
