from __future__ import annotations

import json
from pathlib import Path

from fleet_protocol.schemas import render_schemas

DOCS = Path(__file__).resolve().parents[2] / "docs" / "protocol"


def test_published_json_schemas_match_the_models() -> None:
    rendered = render_schemas()
    stale = [
        name
        for name, text in rendered.items()
        if not (DOCS / name).is_file() or (DOCS / name).read_text() != text
    ]
    assert not stale, f"docs/protocol is stale for {stale}: run `make schemas`"


def test_schemas_declare_the_schema_version_field() -> None:
    for text in render_schemas().values():
        schema = json.loads(text)
        assert "schema_version" in schema["properties"]
