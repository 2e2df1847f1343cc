"""Where a training run may write: checked before any model loads, and locked while it trains.

    check_output(config)          # raises OutputError
    with output_lock(config): ...

`--out` must not be, or sit inside, the model, the data, the reward model or the evaluation data (saving would
overwrite the weights being trained from, and the embedded model's cache would keep serving them). A non-empty
`--out` must be this kind of run's own folder continued with `--resume`, or be replaced on purpose with
`--overwrite`. Only the main process checks and locks (the others of an `accelerate launch` share its folder).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from cai.errors import UsageError
from cai.runs.store import FolderLock
from cai.train.config import TrainConfig


class OutputError(UsageError):
    """An output folder cai will not write into, and why."""


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _inputs(config: TrainConfig) -> dict[str, Path]:
    from cai.models import resolve_model

    named = {"--model": None, "--data": config.data, "--eval-data": config.eval_data,
             "--reward-model": getattr(config, "reward_model", None),
             "--cost-model": getattr(config, "cost_model", None),
             "--reference-model": getattr(config, "reference_model", None)}
    found = {}
    for flag, value in named.items():
        if flag == "--model":
            value = resolve_model(config.model)  # the embedded model's cache folder when unset
        for i, one in enumerate(value if isinstance(value, list) else [value]):  # GRPO takes several reward models
            if one and Path(one).expanduser().exists():
                found[flag if not isinstance(value, list) else f"{flag}[{i}]"] = Path(one).expanduser().resolve()
    return found


def train_fields(config: TrainConfig) -> dict:
    """What a training run records and a resume must match: its settings (those `MAY_CHANGE` aside) and the
    fingerprints of its model(s) and data."""
    from cai.runs.fingerprint import model_fingerprint
    from cai.runs.resume import MAY_CHANGE, data_fingerprint, resume_fields

    settings = config.model_dump(mode="json", exclude=set(MAY_CHANGE))
    inputs = {"model": model_fingerprint(config.model), "data": data_fingerprint(config.data),
              "eval_data": data_fingerprint(config.eval_data)}
    for name in ("reward_model", "cost_model", "reference_model"):
        value = getattr(config, name, None)
        if isinstance(value, list):
            inputs[name] = [model_fingerprint(v) for v in value]
        elif value is not None:
            inputs[name] = model_fingerprint(value)
    return resume_fields(task_of(config), settings, inputs)


def task_of(config: TrainConfig) -> str:
    """The `cai train` task whose settings class `config` is."""
    from cai.registry import TASKS

    for name, stage in TASKS.items():
        if type(config) is stage.config_class():
            return name
    raise UsageError(f"no training task takes {type(config).__name__}")


def check_output(config: TrainConfig) -> None:
    if not _is_main_process():
        return
    out = Path(config.out).expanduser().resolve()
    for flag, path in _inputs(config).items():
        if out == path or path in out.parents:
            raise OutputError(f"--out {config.out} is {'the same folder as' if out == path else 'inside'} "
                              f"{flag} {path}: training would overwrite its own input; choose another --out")
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputError(f"--out {config.out} is a file, not a folder")
    contents = [p.name for p in out.iterdir() if p.name != ".lock"]
    if not contents or config.overwrite:
        return
    recorded = next((out / name for name in ("train_manifest.json", "ensemble.json") if (out / name).is_file()), None)
    if recorded is not None:
        if config.resume:
            from cai.runs.resume import check_resume
            from cai.runs.store import read_manifest

            check_resume(read_manifest(recorded), train_fields(config), f"--out {config.out}",
                         "Continue with the same settings (only max_steps, epochs and the save, eval and logging "
                         "cadence may change), or use another --out, or --overwrite to start again.")
            return
        raise OutputError(f"--out {config.out} holds an earlier training run: add --resume to continue it, or "
                          "--overwrite to replace it")
    raise OutputError(f"--out {config.out} is not empty ({', '.join(sorted(contents)[:5])}"
                      f"{', ...' if len(contents) > 5 else ''}) and holds no cai training run: choose an empty "
                      "folder, or add --overwrite to write there anyway")


@contextlib.contextmanager
def output_lock(config: TrainConfig) -> Iterator[None]:
    """Hold the output folder for the run (main process only)."""
    if not _is_main_process():
        yield
        return
    lock = FolderLock(Path(config.out).expanduser()).acquire()
    try:
        yield
    finally:
        lock.release()
