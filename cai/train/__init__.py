"""The bundled trainer: SFT, DPO (sigmoid, IPO, soft labels), a reward model and PPO against it, on torch +
transformers + accelerate + peft.

    cai train sft --data outputs/quickstart --out outputs/sft
    cai train dpo --data outputs/<judge-run> --out outputs/dpo --loss-type soft
    cai train rm  --data outputs/<judge-run> --out outputs/rm
    cai train cost --data outputs/<judge-run> --out outputs/cost     # Safe RLHF's cost model
    cai train ppo --model outputs/sft --reward-model outputs/rm --data red-team --out outputs/ppo
    cai train ppo ... --cost-model outputs/cost --cost-limit 0       # PPO under a cost limit (Lagrangian)
    cai train online-dpo --prompts red-team --rounds 3 --out outputs/online   # sample -> judge -> DPO rounds
    accelerate launch -m cai train dpo ...        # several GPUs or nodes
"""

from __future__ import annotations

from cai.train.config import (
    CONFIGS,
    CostConfig,
    DPOConfig,
    OnlineDPOConfig,
    PPOConfig,
    RewardConfig,
    TrainConfig,
)


def run_training(task: str, config: TrainConfig) -> dict[str, float]:
    """Check the data and model, train, save; returns the last logged metrics."""
    if task == "online-dpo":
        from cai.train.online import run_online as prepare
    elif task == "sft":
        from cai.train.sft import prepare_sft as prepare
    elif task == "dpo":
        from cai.train.dpo import prepare_dpo as prepare
    elif task == "rm":
        from cai.train.reward import prepare_reward as prepare
    elif task == "cost":
        from cai.train.cost import prepare_cost as prepare
    elif task == "ppo":
        from cai.train.ppo import prepare_ppo as prepare
    else:
        raise ValueError(f"unknown training task {task!r}")
    if not isinstance(config, CONFIGS[task]):
        raise TypeError(f"`cai train {task}` needs a {CONFIGS[task].__name__}, got {type(config).__name__}")
    from cai.train.outputs import check_output, output_lock

    if task != "online-dpo":  # online-dpo checks its own folder: a run continues with the same command
        check_output(config)  # before any model loads
    with output_lock(config):
        if task == "online-dpo":
            return prepare(config)
        if task in ("rm", "cost") and config.ensemble > 1:
            from cai.train.ensemble import train_ensemble

            return train_ensemble(config, prepare)
        return prepare(config).train()


__all__ = ["CONFIGS", "CostConfig", "DPOConfig", "OnlineDPOConfig", "PPOConfig", "RewardConfig", "TrainConfig", "run_training"]
