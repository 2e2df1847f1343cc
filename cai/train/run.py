"""Running one `cai train` task: the task's settings checked (paths, model kinds, the output folder, a resume's
settings) before anything loads, the folder locked, then the task's `prepare` from the registry trains.

    run_training("dpo", DPOConfig(...))      # the last logged metrics
"""

from __future__ import annotations

from typing import Any

from cai.errors import UsageError
from cai.registry import TASKS, load


def check_inputs(config: Any) -> None:
    """Every path and model the settings name, and the kind of the reward and cost models, before any loads."""
    from cai.runs.preflight import check_training

    problems = check_training(config)
    if problems:
        raise UsageError("cannot train:\n" + "\n".join(f"  {p}" for p in problems))


def run_training(task: str, config: Any) -> dict[str, float]:
    """Check the data and model, train, save; returns the last logged metrics."""
    from cai.registry import canonical
    from cai.train.outputs import check_output, output_lock

    task = canonical(task)
    if task not in TASKS:
        raise ValueError(f"unknown training task {task!r} (known: {', '.join(TASKS)})")
    wanted = TASKS[task].config_class()
    if type(config) is not wanted:
        raise TypeError(f"`cai train {task}` needs a {wanted.__name__}, got {type(config).__name__}")
    check_inputs(config)
    prepare = load(TASKS[task].prepare)
    if task != "online-dpo":  # online-dpo checks its own folder: a run continues with the same command
        check_output(config)  # before any model loads
    with output_lock(config):
        if task == "online-dpo":
            return prepare(config)
        if getattr(config, "ensemble", 1) > 1:
            from cai.train.ensemble import train_ensemble

            return train_ensemble(config, prepare)
        return prepare(config).train()
