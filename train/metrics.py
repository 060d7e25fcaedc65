"""metrics.jsonl + TensorBoard events in the run directory (rank 0 only).

Each ``write(row)`` appends one JSON line (flushed, so a killed run keeps what it logged) and
one TensorBoard scalar per numeric field, at ``row["step"]``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path


class MetricsLog:
    def __init__(self, run_dir: str | Path, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._file = self._tb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a")
            self._tb = SummaryWriter(str(Path(run_dir) / "tb"))

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        row = {"time": round(time.time(), 3), **row}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        for k, v in row.items():
            if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
                self._tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self.enabled and not self._file.closed:
            self._file.close()
            self._tb.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
