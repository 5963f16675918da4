"""Reading and writing the test vectors of protocol.md §14 (tests/vectors/frames.json)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from sessiond_client.protocol import frames

VECTORS = Path(__file__).parent / "vectors" / "frames.json"

CLASSES: dict[str, type[frames.Frame]] = {
    "HELLO": frames.Hello,
    "WELCOME": frames.Welcome,
    "DATA": frames.Data,
    "ACK": frames.Ack,
    "PING": frames.Ping,
    "PONG": frames.Pong,
    "GOAWAY": frames.Goaway,
    "CLOSE": frames.Close,
}
NAMES = {cls: name for name, cls in CLASSES.items()}


def to_json(value: Any) -> Any:
    """Frame fields as JSON: bytes as "hex:...", tuples as lists, nested frames as maps."""
    if isinstance(value, bytes):
        return "hex:" + value.hex()
    if isinstance(value, tuple | list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def frame_to_json(frame: frames.Frame) -> dict[str, Any]:
    return {"type": NAMES[type(frame)], **to_json(frame)}


def from_json(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("hex:"):
        return bytes.fromhex(value[4:])
    if isinstance(value, list):
        return tuple(from_json(v) for v in value)
    if isinstance(value, dict):
        return {k: from_json(v) for k, v in value.items()}
    return value


def frame_from_json(data: dict[str, Any]) -> frames.Frame:
    fields = {k: from_json(v) for k, v in data.items() if k != "type"}
    if data["type"] == "HELLO" and fields.get("resume") is not None:
        fields["resume"] = frames.Resume(**fields["resume"])
    return CLASSES[data["type"]](**fields)


def load() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(VECTORS.read_text())
    return loaded
