"""Metrics as JSON lines (one object per logging step), as big_vision writes them."""
from __future__ import annotations

import json
import math
import os
import pathlib


def _clean(v):
    v = float(v) if not isinstance(v, (str, int)) else v
    return None if isinstance(v, float) and not math.isfinite(v) else v


class JsonlWriter:
    """Appends {"step": k, **values} lines to `path`.

    Args:
      path: file (parent created).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> int:
        """Drops records with "step" > `step` (a resumed run replays them); returns how many were dropped."""
        if not self.path.exists():
            return 0
        lines = self.path.read_text().splitlines()
        keep = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= step]
        self.path.write_text("".join(ln + "\n" for ln in keep))
        return len(lines) - len(keep)

    def write(self, step: int, values: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": int(step)} | {k: _clean(v) for k, v in values.items()}) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All records of a metrics.jsonl file."""
    return [json.loads(ln) for ln in pathlib.Path(path).read_text().splitlines() if ln.strip()]
