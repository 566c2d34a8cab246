from __future__ import annotations

import dataclasses
import json
import re
import typing
from datetime import datetime, timezone
from typing import Any

import pytest

from kubefwd.events import types
from kubefwd.events.types import (
    EVENT_TYPES,
    Event,
    ForwardBound,
    LogLine,
    WarningRaised,
    to_json,
)

# One plausible value per field type, to build every event without naming its fields.
SAMPLES: dict[Any, Any] = {
    "str": "ctx/shop/web",
    "int": 8080,
    "float": 1.5,
    "str | None": "web-1",
    "int | None": 200,
    "float | None": 2.5,
    "tuple[str, ...]": ("web", "web.shop"),
}


def build(cls: type[Event], **overrides: Any) -> Event:
    values = {
        f.name: SAMPLES[f.type]
        for f in dataclasses.fields(cls)
        if f.name != "time"
    }
    if cls is LogLine:
        values["level"] = "info"
    values.update(overrides)
    return cls(**values)


def all_subclasses(cls: type) -> set[type]:
    """Every subclass defined in the types module (``slots=True`` builds a new class; the
    one it replaced can linger in ``__subclasses__`` until collected)."""
    found = set()
    for sub in cls.__subclasses__():
        if getattr(types, sub.__name__, None) is sub:
            found |= {sub, *all_subclasses(sub)}
    return found


def test_every_event_class_is_listed_and_named_in_snake_case() -> None:
    assert set(EVENT_TYPES) == all_subclasses(Event)
    names = [cls.type for cls in EVENT_TYPES]
    assert len(set(names)) == len(names)
    for cls in EVENT_TYPES:
        assert "type" in cls.__dict__, f"{cls.__name__} does not set its own type"
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", cls.type)
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()
        assert cls.type == snake


def test_events_are_frozen_slotted_and_keyword_only() -> None:
    for cls in EVENT_TYPES:
        event = build(cls)
        assert not hasattr(event, "__dict__"), cls.__name__
        with pytest.raises(dataclasses.FrozenInstanceError):
            event.time = 0.0  # type: ignore[misc]
        fields = [f for f in dataclasses.fields(cls) if f.name != "time"]
        if fields:
            with pytest.raises(TypeError):
                cls(*[SAMPLES[f.type] for f in fields])
        assert "type" not in {f.name for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        assert hints["time"] is float


@pytest.mark.parametrize("cls", EVENT_TYPES, ids=lambda c: c.__name__)
def test_every_event_serialises_to_plain_json(cls: type[Event]) -> None:
    event = build(cls, time=1714564800.1234)
    out = to_json(event)
    assert list(out)[:2] == ["type", "time"]
    assert out["type"] == cls.type
    assert out["time"] == "2024-05-01T12:00:00.123Z"
    field_names = [f.name for f in dataclasses.fields(cls) if f.name != "time"]
    assert list(out)[2:] == field_names
    # Only JSON types: it survives a strict round trip unchanged.
    assert json.loads(json.dumps(out, allow_nan=False)) == out


def test_tuples_become_lists_and_none_stays_null() -> None:
    event = ForwardBound(
        key="c/ns/web", context="c", namespace="ns", service="web", ip="127.1.27.1",
        names=("web", "web.ns"), ports=("80", "8080:80"), pod=None,
    )
    out = to_json(event)
    assert out["names"] == ["web", "web.ns"] and out["ports"] == ["80", "8080:80"]
    assert out["pod"] is None
    assert json.dumps(out)


def test_time_defaults_to_the_wall_clock() -> None:
    before = datetime.now(timezone.utc).timestamp()
    event = WarningRaised(message="UDP port skipped")
    after = datetime.now(timezone.utc).timestamp()
    assert before <= event.time <= after
    assert event.key is None
    assert to_json(event)["time"].endswith("Z")


def test_log_line_refuses_an_unknown_level() -> None:
    for level in types.LOG_LEVELS:
        LogLine(level=level, message="x")
    with pytest.raises(ValueError, match="verbose"):
        LogLine(level="verbose", message="x")
