"""Strict JSON files: every JSON file vitsam writes goes through ``write_json``.

Python's json module writes ``NaN`` and ``Infinity`` by default, which strict parsers
(and most non-Python readers) reject; a missing or non-finite number is written as
null instead. Files are written to a temporary name and renamed, so a crash never
leaves half a file.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path


def strict(value):
    """``value`` with every non-finite float replaced by None, tuples as lists, numpy
    scalars as Python numbers (recursively through dicts and lists)."""
    if isinstance(value, dict):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:   # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(value, indent: int | None = 2) -> str:
    return json.dumps(strict(value), indent=indent, allow_nan=False)


def write_json(value, path: str | Path) -> Path:
    """Write ``value`` as strict JSON to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(dumps(value) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return path
