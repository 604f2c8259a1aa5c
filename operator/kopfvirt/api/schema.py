"""A small schema layer over dataclasses: each field carries its OpenAPI facts.

The same declarations give the CRD's structural schema (`openapi`), the parsing of an
object's dict into typed models (`from_dict`), and the reference docs (`gen.py`).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any

MISSING = dataclasses.MISSING


class SpecError(ValueError):
    """A spec that cannot be used; the message names the field."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def field(default: Any = MISSING, *, description: str, enum: list | None = None,
          minimum: int | None = None, maximum: int | None = None, pattern: str | None = None,
          min_length: int | None = None, max_length: int | None = None, max_items: int | None = None,
          rules: tuple[tuple[str, str], ...] = (), list_map_keys: tuple[str, ...] = (),
          fmt: str | None = None, immutable: bool = False, json: str | None = None):
    """A dataclass field with its schema; no default means required; `json` overrides the
    camelCase name derived from the Python one."""
    meta = {k: v for k, v in dict(description=description, enum=enum, minimum=minimum, maximum=maximum,
                                   pattern=pattern, minLength=min_length, maxLength=max_length, maxItems=max_items,
                                   format=fmt).items() if v is not None}
    rules = tuple(rules) + ((("self == oldSelf", "is immutable"),) if immutable else ())
    meta["x-kubernetes-validations"] = [{"rule": r, "message": m} for r, m in rules]
    meta["listMapKeys"] = list(list_map_keys)
    if json:
        meta["json"] = json
    if default is MISSING:
        return dataclasses.field(metadata=meta)
    if isinstance(default, type) and dataclasses.is_dataclass(default):  # a nested object, all defaults
        return dataclasses.field(default_factory=default, metadata={**meta, "default": {}})
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata={**meta, "default": default})
    return dataclasses.field(default=default, metadata={**meta, "default": default})


def json_name(name: str) -> str:
    head, *rest = name.rstrip("_").split("_")
    return head + "".join(w.title() for w in rest)


def key(f: dataclasses.Field) -> str:
    """A field's name in the API."""
    return f.metadata.get("json") or json_name(f.name)


def _unwrap_optional(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _type_schema(tp) -> dict:
    tp, _ = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if tp is str:
        return {"type": "string"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if origin is list:
        return {"type": "array", "items": _type_schema(typing.get_args(tp)[0])}
    if origin is dict:
        value = typing.get_args(tp)[1]
        if value is Any:
            return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        return {"type": "object", "additionalProperties": _type_schema(value)}
    if tp is Any:
        return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    if dataclasses.is_dataclass(tp):
        return openapi(tp)
    raise TypeError(f"no schema for {tp!r}")


def openapi(cls) -> dict:
    """The structural OpenAPI v3 schema of a dataclass, with descriptions and validations."""
    hints = _hints(cls)
    props, required = {}, []
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        meta.pop("json", None)
        schema = _type_schema(hints[f.name])
        schema["description"] = meta.pop("description")
        rules = meta.pop("x-kubernetes-validations")
        keys = meta.pop("listMapKeys")
        default = meta.get("default", MISSING)
        if default is None or default == [] or (default == {} and "additionalProperties" in schema):
            meta.pop("default", None)  # absent means empty; the API server need not write it
        if schema.get("type") == "array" and keys:
            schema["x-kubernetes-list-type"] = "map"
            schema["x-kubernetes-list-map-keys"] = keys
        schema.update(meta)
        if rules:
            schema["x-kubernetes-validations"] = rules
        props[key(f)] = schema
        if f.default is MISSING and f.default_factory is MISSING:
            required.append(key(f))
    out = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    extra = getattr(cls, "__schema__", {})
    if extra.get("rules"):
        out["x-kubernetes-validations"] = [{"rule": r, "message": m} for r, m in extra["rules"]]
    doc = (cls.__doc__ or "").strip()
    if doc and not doc.startswith(cls.__name__ + "("):
        out["description"] = " ".join(doc.split("\n\n")[0].split())
    return out


def _convert(tp, value, path: str):
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise SpecError(path, "is required")
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise SpecError(path, f"must be an object, not {type(value).__name__}")
        return from_dict(tp, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise SpecError(path, "must be a list")
        item = typing.get_args(tp)[0]
        return [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is Any:
        if not isinstance(value, dict):
            raise SpecError(path, "must be an object")
        return dict(value)
    want = {str: str, int: int, bool: bool}[tp]
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        raise SpecError(path, f"must be a {want.__name__}, not {value!r}")
    return value


def from_dict(cls, data: dict, path: str = "spec"):
    """Typed model from an object's dict, with schema defaults and field-named errors."""
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        name = key(f)
        here = f"{path}.{name}"
        if name in data:
            value = _convert(hints[f.name], data[name], here)
            meta = f.metadata
            if "enum" in meta and value not in meta["enum"]:
                raise SpecError(here, f"must be one of {', '.join(map(str, meta['enum']))}, not {value!r}")
            if "minimum" in meta and value < meta["minimum"]:
                raise SpecError(here, f"must be at least {meta['minimum']}, not {value}")
            if "maximum" in meta and value > meta["maximum"]:
                raise SpecError(here, f"must be at most {meta['maximum']}, not {value}")
            if "pattern" in meta and not re.search(meta["pattern"], value):  # OpenAPI: unanchored
                raise SpecError(here, f"{value!r} does not match {meta['pattern']}")
            kwargs[f.name] = value
        elif f.default is MISSING and f.default_factory is MISSING:
            raise SpecError(here, "is required")
    return cls(**kwargs)


def to_dict(obj) -> Any:
    """The JSON form of a model (camelCase keys, None left out)."""
    if dataclasses.is_dataclass(obj):
        return {key(f): to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if getattr(obj, f.name) is not None}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
