"""The one place results become JSON: dataclasses, numpy values and paths to plain JSON types.

The CLI (`--json`), the service and written reports all call `to_jsonable`, so a result prints
the same everywhere: NaN and infinities become null, tuples lists, numpy scalars Python numbers,
paths strings, and keys starting with "_" and dataclass fields marked `metadata={"json": False}`
(in-memory extras, such as an evaluation's raw pair arrays) are left out; a field's metadata may
also rename it ({"json": "from"}) or leave it out when None ({"omit_none": True}).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import PurePath
from typing import Any


def to_jsonable(obj: Any) -> Any:
    """A JSON-ready copy of `obj` (see the module docstring for the rules)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _dataclass_dict(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, PurePath):
        return str(obj)
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy scalars and arrays
        return to_jsonable(obj.tolist())
    return obj


def _dataclass_dict(obj: Any) -> dict[str, Any]:
    """A dataclass's fields by name, honouring their metadata: {"json": "key"} prints a field under
    another key, {"json": False} leaves it out, {"omit_none": True} leaves it out when None."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        key = f.metadata.get("json", f.name)
        value = getattr(obj, f.name)
        if key is False or f.name.startswith("_") or (value is None and f.metadata.get("omit_none")):
            continue
        out[key] = to_jsonable(value)
    return out
