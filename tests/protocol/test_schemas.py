from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fleet_protocol import InvalidTopic, validate_id
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


@pytest.mark.parametrize("value", ["dev-1", "site.a:7", "x" * 64, "", "-dev", "a/b", "a+", "x" * 65])
def test_published_id_pattern_agrees_with_the_validator(value: str) -> None:
    schema = json.loads((DOCS / "telemetry-batch.schema.json").read_text())
    published = schema["properties"]["device_id"]
    accepted_by_schema = re.fullmatch(published["pattern"].strip("^$"), value) is not None
    try:
        validate_id(value, "device")
        accepted = True
    except InvalidTopic:
        accepted = False
    assert accepted_by_schema == accepted
