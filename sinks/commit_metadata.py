"""The metadata of the sink's offset commits: one JSON object, read back when a partition is assigned.

Two parts share it, each with its own keys and format version: the re-emission marks (``sinks.reemission``: keys
``reemission``, ``marks``) and the row progress (``sinks.row_progress``: ``progress``, ``through``, ``rows``). A
reader ignores a part whose version key is absent or different (an older or newer writer), so each part can change
its format on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

# Kafka's default offset.metadata.max.bytes is 4096; what does not fit is left out (dropping either part is safe).
MAX_BYTES = 4000


def combine(*parts: Mapping[str, Any]) -> str:
    """One metadata string from the keys of each part ("" when there are none)."""
    merged: dict[str, Any] = {}
    for part in parts:
        merged.update(part)
    return orjson.dumps(merged).decode() if merged else ""


def load(metadata: str | None, version_key: str, version: int) -> dict[str, Any] | None:
    """The metadata object when its ``version_key`` is ``version``; None when absent, not JSON or another format."""
    if not metadata:
        return None
    try:
        data = orjson.loads(metadata)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get(version_key) != version:
        return None
    return data
