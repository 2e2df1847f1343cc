"""The bundled trainer: SFT and DPO (sigmoid, IPO, soft labels) on torch + transformers + accelerate + peft.

    cai train sft --data outputs/quickstart --out outputs/sft
    cai train dpo --data outputs/<judge-run> --out outputs/dpo --loss-type soft
    accelerate launch -m cai train dpo ...        # several GPUs or nodes
"""

from __future__ import annotations

from cai.train.config import TrainConfig


def run_training(task: str, config: TrainConfig) -> dict[str, float]:
    """Check the data and model, train, save; returns the last logged metrics."""
    if task == "sft":
        from cai.train.sft import prepare_sft as prepare
    elif task == "dpo":
        from cai.train.dpo import prepare_dpo as prepare
    else:
        raise ValueError(f"unknown training task {task!r}")
    return prepare(config).train()


__all__ = ["TrainConfig", "run_training"]
