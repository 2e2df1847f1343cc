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

The tasks are the registry's (cai/registry.py, `TASKS`); `cai.train.run.run_training` runs one.
"""
