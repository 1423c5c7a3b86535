"""Settings dataclasses filled from config sections."""

from __future__ import annotations

import dataclasses
from typing import Any


def section_fields(cls: type, section: dict[str, Any], **given: Any) -> dict[str, Any]:
    """The fields of settings dataclass `cls` taken from a config section by name (those in `given`
    from elsewhere): what each stage's `Settings.from_config(section)` passes to its constructor."""
    return {f.name: given[f.name] if f.name in given else section[f.name] for f in dataclasses.fields(cls) if f.init and (f.name in given or f.name in section)}
