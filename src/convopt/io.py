"""Safe file handling: atomic writes, and nothing ever written over a user's input."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temp file in the same folder and a rename (never half-written)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def cache_dir() -> Path:
    """Where convopt keeps measured facts about this machine: $CONVOPT_CACHE_DIR or ~/.cache/convopt."""
    root = os.environ.get("CONVOPT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "convopt")
    return Path(root)


def strict_json(data: object) -> str:
    """JSON that every parser accepts: NaN and +-inf (e.g. the SQNR of an exactly representable layer)
    become null, since standard JSON has no such numbers."""

    def clean(value: object) -> object:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(data), indent=2, allow_nan=False)
