"""JSON-schema validation of configs and on-disk documents, with messages that name the key.

Schemas live in the repository's top-level `schemas/` folder, which the distribution installs as
the `core.schemas` package.
"""

from __future__ import annotations

import copy
import functools
import math
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from core.errors import PipelineError


class SchemaError(PipelineError, ValueError):
    """A document that does not match its schema; the message lists every offending key."""


def schema_dir() -> Path:
    try:
        return Path(str(resources.files("core.schemas")))
    except ModuleNotFoundError:  # running from a source tree that is not installed
        return Path(__file__).resolve().parent.parent / "schemas"


@functools.cache
def load_schema(name: str) -> dict[str, Any]:
    with open(schema_dir() / name, encoding="utf-8") as f:
        schema = yaml.safe_load(f)
    jsonschema.validators.validator_for(schema).check_schema(schema)
    return schema


def _key(path: Any) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _messages(error: jsonschema.ValidationError) -> list[str]:
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        if extra and "additionalProperties" in error.schema and error.schema["additionalProperties"] is False:
            return [f"unknown key '{_key([*error.absolute_path, k])}' (allowed: {', '.join(sorted(allowed))})" for k in extra]
    return [f"key '{_key(error.absolute_path)}': {error.message}"]


def _at(doc: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def fill_defaults(schema: dict[str, Any], instance: Any) -> None:
    """Set every missing property that has a `default` in `schema`, recursively, in place."""
    if not isinstance(instance, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            fill_defaults(sub, instance[key])


def non_finite_numbers(doc: Any, path: tuple[Any, ...] = ()) -> list[str]:
    """The keys of `doc` (recursively) whose value is a NaN or an infinity, as dotted names: JSON
    Schema's ranges let them through (every comparison with NaN is false), so every document is
    checked for them; no setting of this project may be non-finite."""
    if isinstance(doc, float):
        return [] if math.isfinite(doc) else [_key(path)]
    if isinstance(doc, dict):
        return [k for key, value in doc.items() for k in non_finite_numbers(value, (*path, key))]
    if isinstance(doc, (list, tuple)):
        return [k for i, value in enumerate(doc) for k in non_finite_numbers(value, (*path, i))]
    return []


def with_registries(node: Any, registries: dict[str, list[str]]) -> Any:
    """`node` (a schema) with every `x-registry: <name>` replaced by `enum: registries[<name>]`: the
    names a registry in the code defines, written nowhere else."""
    if isinstance(node, dict):
        out = {k: with_registries(v, registries) for k, v in node.items() if k != "x-registry"}
        if "x-registry" in node:
            out["enum"] = list(registries[node["x-registry"]])
        return out
    if isinstance(node, list):
        return [with_registries(v, registries) for v in node]
    return node


def strict_integers(validator: Any) -> Any:
    """`validator` (a jsonschema class) whose `integer` is an int, not a float with no fraction
    (JSON Schema's draft 6 onwards takes 20.0 as an integer; the code that reads the value then
    fails far from the key, e.g. `range(20.0)`)."""
    checker = validator.TYPE_CHECKER.redefine("integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool))
    return jsonschema.validators.extend(validator, type_checker=checker)


def validate_document(doc: Any, schema_name: str, what: str, defaults: bool = False, registries: dict[str, list[str]] | None = None) -> Any:
    """Validate `doc` against `schemas/<schema_name>`; return it (a copy with defaults if asked).
    Every number must be finite (`non_finite_numbers`). `what` names the document in the error
    (a file path, "config"). `registries`: the names each `x-registry` of the schema allows.
    """
    schema = load_schema(schema_name)
    if registries is not None:
        schema = with_registries(schema, registries)
    if defaults:
        doc = copy.deepcopy(doc)
        fill_defaults(schema, doc)
    validator = strict_integers(jsonschema.validators.validator_for(schema))(schema)
    errors = sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
    lines = [m for e in errors for m in _messages(e)]
    lines += [f"key '{k}': must be a finite number, got {_at(doc, k)}" for k in non_finite_numbers(doc)]
    if lines:
        raise SchemaError(f"{what} does not match {schema_name}:\n  " + "\n  ".join(lines))
    return doc
