"""The tuning cache: measured per-layer choices, keyed so that a stale or foreign entry is never reused.

One JSON file per machine fingerprint (CPU model and flags, threads, torch version) under
`cache_dir()/tuning/`. Entry keys add the ConvSpec, input shape, dtype and error budget. A corrupt file
or one written for another machine is rebuilt, with a warning that says so.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

from convopt.analysis.hardware import machine_fingerprint
from convopt.io import atomic_write_text, cache_dir
from convopt.spec import ConvSpec

CACHE_VERSION = 1


def entry_key(spec: ConvSpec, input_shape: tuple[int, ...], dtype: str, budget: float, candidates: list[str]) -> str:
    """Everything a measured choice depends on besides the machine (which names the file)."""
    return json.dumps([asdict(spec), list(input_shape), dtype, budget, sorted(candidates)], sort_keys=True)


class TuningCache:
    """A dict of measured choices persisted atomically; `path=None` picks this machine's default file."""

    def __init__(self, threads: int, path: str | Path | None = None):
        self.fingerprint = machine_fingerprint(threads)
        self.path = Path(path) if path else cache_dir() / "tuning" / f"{self.fingerprint['id']}.json"
        self.entries: dict[str, Any] = {}
        self.rebuilt_reason: str | None = None
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
                raise ValueError(f"unknown cache version {data.get('version') if isinstance(data, dict) else data!r}")
            if data.get("fingerprint") != self.fingerprint:
                raise ValueError("it was measured on another machine, thread count or torch version")
            if not isinstance(data.get("entries"), dict):
                raise ValueError("no entries table")
            self.entries = data["entries"]
        except (ValueError, OSError) as exc:  # json.JSONDecodeError is a ValueError
            self.rebuilt_reason = f"tuning cache {self.path} is unusable ({exc}); re-tuning and rewriting it"
            warnings.warn(self.rebuilt_reason, RuntimeWarning, stacklevel=3)
            self.entries = {}

    def get(self, key: str) -> Any:
        return self.entries.get(key)

    def put(self, key: str, value: Any) -> None:
        self.entries[key] = value

    def save(self) -> Path:
        payload = {"version": CACHE_VERSION, "fingerprint": self.fingerprint, "entries": self.entries}
        return atomic_write_text(self.path, json.dumps(payload, indent=1))
