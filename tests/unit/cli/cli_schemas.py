"""JSON schemas of the ``shmipc`` command's --json outputs, and a small validator for them.

The schemas are a subset of JSON Schema (type, properties, required, items, enum,
additionalProperties: false) so they can be handed to ``jsonschema`` unchanged; the
validator here checks exactly that subset, so the tests need no extra package.
"""

from __future__ import annotations

from typing import Any

_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "null": type(None),
}


def validate(value: Any, schema: dict, path: str = "$") -> None:
    """Raise AssertionError naming the first place ``value`` breaks ``schema``."""
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        ok = False
        for name in names:
            expected = _TYPES[name]
            if isinstance(value, bool) and name in ("integer", "number"):
                continue  # bool is an int subclass, not a JSON number
            if isinstance(value, expected):
                ok = True
                break
        assert ok, f"{path}: {value!r} is not of type {names}"
    if "enum" in schema:
        assert value in schema["enum"], f"{path}: {value!r} not in {schema['enum']}"
    if isinstance(value, dict):
        for key in schema.get("required", ()):
            assert key in value, f"{path}: missing {key!r}"
        props = schema.get("properties", {})
        if schema.get("additionalProperties") is False:
            extra = set(value) - set(props)
            assert not extra, f"{path}: unexpected {sorted(extra)}"
        for key, sub in props.items():
            if key in value:
                validate(value[key], sub, f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            validate(item, schema["items"], f"{path}[{i}]")


INT = {"type": "integer"}
INT_OR_NULL = {"type": ["integer", "null"]}
NUM_OR_NULL = {"type": ["number", "null"]}
STR = {"type": "string"}
ALIVE = {"type": ["string", "null"], "enum": ["alive", "dead", "unknown", None]}

PARTICIPANTS = {
    "type": "object",
    "required": ["pids", "complete"],
    "additionalProperties": False,
    "properties": {"pids": {"type": "array", "items": INT}, "complete": {"type": "boolean"}},
}

LS_ROW = {
    "type": "object",
    "additionalProperties": False,
    "required": [
        "name",
        "kind",
        "size",
        "owner",
        "creator",
        "state",
        "participants",
        "messages",
        "bytes",
        "depth",
        "lag",
        "rates",
        "age_s",
        "shmipc",
        "note",
    ],
    "properties": {
        "name": STR,
        "kind": STR,
        "size": INT,
        "owner": {
            "type": "object",
            "required": ["uid", "user", "mode"],
            "additionalProperties": False,
            "properties": {"uid": INT, "user": {"type": ["string", "null"]}, "mode": STR},
        },
        "creator": {
            "type": "object",
            "required": ["pid", "alive"],
            "additionalProperties": False,
            "properties": {"pid": INT_OR_NULL, "alive": ALIVE},
        },
        "state": STR,
        "participants": PARTICIPANTS,
        "messages": INT_OR_NULL,
        "bytes": INT_OR_NULL,
        "depth": INT_OR_NULL,
        "lag": INT_OR_NULL,
        "rates": {
            "type": "object",
            "required": ["messages_per_s", "bytes_per_s"],
            "additionalProperties": False,
            "properties": {"messages_per_s": NUM_OR_NULL, "bytes_per_s": NUM_OR_NULL},
        },
        "age_s": {"type": "number"},
        "shmipc": {"type": "boolean"},
        "note": STR,
    },
}

LS = {
    "type": "object",
    "required": ["directory", "segments"],
    "additionalProperties": False,
    "properties": {"directory": STR, "segments": {"type": "array", "items": LS_ROW}},
}

IDENTITY = {
    "type": ["object", "null"],
    "required": ["tid", "start", "parked", "alive"],
    "additionalProperties": False,
    "properties": {"tid": INT, "start": INT, "parked": {"type": "boolean"}, "alive": ALIVE},
}

REGISTRY = {
    "type": "object",
    "required": ["count", "registered"],
    "additionalProperties": False,
    "properties": {"count": INT, "registered": {"type": "array", "items": IDENTITY}},
}

RING = {
    "type": "object",
    "required": [
        "offset",
        "version",
        "capacity",
        "max_count",
        "spsc",
        "positions",
        "statistics",
        "locks",
        "sleepers",
        "quarantine",
    ],
    "properties": {
        "capacity": INT,
        "spsc": {"type": "boolean"},
        "positions": {
            "type": "object",
            "required": ["head", "tail", "claim", "peek", "consistent"],
            "properties": {"head": INT, "tail": INT, "claim": INT_OR_NULL, "peek": INT},
        },
        "statistics": {
            "type": "object",
            "required": ["messages_in", "messages_out", "bytes_in", "bytes_out", "depth"],
            "properties": {"depth": INT, "depth_bytes": INT_OR_NULL},
        },
        "locks": {
            "type": "object",
            "required": ["producer", "consumer"],
            "properties": {"producer": IDENTITY, "consumer": IDENTITY},
        },
        "sleepers": {
            "type": "object",
            "required": ["consumers", "producers", "producer_lock", "consumer_lock"],
            "properties": {
                k: REGISTRY for k in ("consumers", "producers", "producer_lock", "consumer_lock")
            },
        },
        "quarantine": {
            "type": "object",
            "required": ["owner", "start", "end", "revoked", "bytes"],
            "properties": {"owner": IDENTITY, "bytes": INT, "revoked": {"type": "boolean"}},
        },
    },
}

INSPECT = {
    "type": "object",
    "required": ["name", "file", "participants", "kind"],
    "properties": {
        "name": STR,
        "kind": STR,
        "file": {
            "type": "object",
            "required": ["size", "uid", "user", "gid", "mode", "inode"],
            "properties": {"size": INT, "uid": INT, "mode": STR},
        },
        "participants": PARTICIPANTS,
        "header": {
            "type": "object",
            "required": [
                "magic",
                "layout_version",
                "kind",
                "init_state",
                "creator_pid",
                "creator_start",
                "total_size",
                "data_offset",
                "creator_uid",
                "flags",
                "creator_pidns",
            ],
            "properties": {"layout_version": INT, "total_size": INT},
        },
        "creator": {
            "type": "object",
            "required": ["pid", "alive"],
            "properties": {"pid": INT, "alive": ALIVE},
        },
        "ring": RING,
        "codec": STR,
        "sync": {"type": "object"},
        "details": {"type": "object"},
    },
}

BENCH = {
    "type": "object",
    "required": ["machine", "sizing", "rows", "skipped"],
    "properties": {
        "machine": {"type": "object"},
        "sizing": STR,
        "skipped": {"type": "array", "items": STR},
        "rows": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "workload",
                    "transport",
                    "transport_key",
                    "status",
                    "ok",
                    "count",
                    "elapsed_s",
                    "messages_per_s",
                    "latency_median_us",
                    "latency_p99_us",
                    "cpu_us_per_msg",
                    "vs_baseline",
                    "detail",
                ],
                "additionalProperties": False,
                "properties": {
                    "workload": STR,
                    "transport": STR,
                    "transport_key": STR,
                    "status": STR,
                    "ok": {"type": "boolean"},
                    "count": INT,
                    "elapsed_s": {"type": "number"},
                    "messages_per_s": NUM_OR_NULL,
                    "latency_median_us": NUM_OR_NULL,
                    "latency_p99_us": NUM_OR_NULL,
                    "cpu_us_per_msg": NUM_OR_NULL,
                    "vs_baseline": NUM_OR_NULL,
                    "detail": STR,
                },
            },
        },
    },
}
