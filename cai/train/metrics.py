"""Training metrics: `metrics.jsonl` in the output folder (one JSON row per logged step, written by the main
process only), cut back to a checkpoint's step on resume, plus TensorBoard or W&B through accelerate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricLog:
    """metrics.jsonl plus optional trackers (through accelerate)."""

    def __init__(self, path: Path, accelerator: Any):
        self.path = path
        self.accelerator = accelerator

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after `step` (and a torn last line): a resumed run logs those steps again."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("step", 0) <= step:
                kept.append(line)
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        partial.replace(self.path)

    def write(self, step: int, values: dict[str, float]) -> None:
        if self.accelerator.is_main_process:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, **values}) + "\n")
            self.accelerator.log(values, step=step)


def _installed(tracker: str) -> bool:
    import importlib.util

    module = {"tensorboard": "tensorboard", "wandb": "wandb"}[tracker]
    if importlib.util.find_spec(module) is None:
        print(f"cai: {tracker} is not installed; metrics go to metrics.jsonl only")
        return False
    return True


def installed_trackers(wanted: list[str]) -> list[str]:
    return [t for t in wanted if _installed(t)]
