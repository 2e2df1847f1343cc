"""`cai train rm`: a reward model (a one-output sequence-classification head on a causal LM) trained
on prompt/chosen/rejected pairs with the Bradley-Terry loss, soft targets from the judge's `p_chosen`, and
batched scoring of (prompt, response) pairs with it.

    cai train rm --data outputs/<judge-run> --out outputs/rm
    cai score --reward-model outputs/rm --data pairs.jsonl --out scored.jsonl

The saved folder is a plain `AutoModelForSequenceClassification` checkpoint (num_labels=1), so transformers,
TRL and vLLM's reward/classify runner load it as it is. The score of a sequence is the head's output on its last
token that is not the pad token: the position transformers' `ForSequenceClassification` pools, so the saved folder
scores the same there (with pad = eos, as Llama-3 ships, that is the token before a final eos).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from cai.train.config import RewardConfig
from cai.train.data import (
    DataError,
    Truncation,
    objective_rows,
    preference_rows,
    tokenize_preferences,
)
from cai.train.dpo import collate_pairs
from cai.train.loop import Trainer
from cai.train.losses import logconf_reward_loss, logconf_weight, reward_loss
from cai.train.modeling import add_lora, disable_dropout, load_tokenizer
from cai.train.scoring import load_reward_model, sequence_scores
from cai.train.sft import split_eval


def reward_loss_fn(config: RewardConfig, progress=lambda: 0.0):
    """The loss of a batch; `progress()` (share of training done) ramps the confidence loss's weight."""
    def loss_fn(model, batch):
        scores = sequence_scores(model, batch["input_ids"], batch["attention_mask"])
        half = scores.shape[0] // 2
        if config.loss == "logconf":
            p_weak = batch.get("p_chosen", torch.ones(half, device=scores.device))
            weight = logconf_weight(progress(), config.logconf_alpha, config.logconf_warmup)
            losses, metrics = logconf_reward_loss(scores[:half], scores[half:], p_weak, weight)
        else:
            losses, metrics = reward_loss(scores[:half], scores[half:], batch.get("p_chosen"), batch.get("margin"),
                                          config.center_rewards_coefficient)
        return losses.mean(), metrics, int(batch["attention_mask"].sum())

    return loss_fn


def collate_reward_pairs(examples: list[dict], pad_id: int, soft: bool, margin: bool) -> dict[str, torch.Tensor]:
    batch = collate_pairs(examples, pad_id)
    del batch["labels"]
    if not soft:
        del batch["p_chosen"]
    if margin:
        batch["margin"] = torch.tensor([e["margin"] for e in examples], dtype=torch.float32)
    return batch


def calibration_error(p_model: list[float], p_target: list[float], bins: int = 10) -> float:
    """ECE of a model trained toward soft targets: pairs binned by sigma(r_c - r_r) in [0, 1], and per bin the
    gap between the mean prediction and the mean target p (the judge's p_chosen; 1 for hard labels)."""
    buckets: list[list[tuple[float, float]]] = [[] for _ in range(bins)]
    for predicted, target in zip(p_model, p_target, strict=True):
        buckets[min(int(predicted * bins), bins - 1)].append((predicted, target))
    return sum(len(b) / len(p_model) * abs(sum(x for x, _ in b) - sum(y for _, y in b)) / len(b)
               for b in buckets if b)


@torch.no_grad()
def held_out_scores(trainer: Trainer) -> Iterator[tuple[list[dict], dict[str, torch.Tensor], torch.Tensor]]:
    """Each held-out chunk of pairs, its batch and the model's sequence scores (chosen half, then rejected half),
    in eval mode and the training precision; the model's mode is restored after."""
    was_training = trainer.model.training
    trainer.model.eval()
    try:
        for start in range(0, len(trainer.eval_examples), trainer.config.batch_size):
            chunk = trainer.eval_examples[start: start + trainer.config.batch_size]
            batch = trainer._to_device(trainer.collate(chunk))
            with trainer.accelerator.autocast():
                scores = sequence_scores(trainer.model, batch["input_ids"], batch["attention_mask"])
            yield chunk, batch, scores
    finally:
        trainer.model.train(was_training)


class RewardTrainer(Trainer):
    """The shared loop; evaluation adds calibration over the whole held-out split (ECE needs all of it)."""

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        result = super().evaluate()
        p_model, p_target, all_scores, lengths = [], [], [], []
        for chunk, batch, scores in held_out_scores(self):
            half = scores.shape[0] // 2
            p_model += torch.sigmoid(scores[:half] - scores[half:]).tolist()
            p_target += batch["p_chosen"].tolist() if "p_chosen" in batch else [1.0] * half
            all_scores += scores.tolist()
            lengths += [len(e["chosen_ids"]) for e in chunk] + [len(e["rejected_ids"]) for e in chunk]
        if p_model:
            from cai.evaluate.diagnostics import pearson

            result["eval/ece"] = calibration_error(p_model, p_target)
            result["eval/pairs"] = float(len(p_model))
            # a reward model that scores length is one a policy can hack by talking longer
            correlation = pearson(all_scores, [float(n) for n in lengths])
            if correlation is not None:
                result["eval/score_length_correlation"] = correlation
        return result


def prepare_reward(config: RewardConfig) -> RewardTrainer:
    tokenizer, path = load_tokenizer(config.model, config.trust_remote_code)
    limits = Truncation(config.max_length, config.max_prompt_length)

    def tokenize(source: str) -> tuple[list[dict], int, bool, bool]:
        rows = preference_rows(source, config.split, "rm", config.keep_abstained)
        if config.objective:
            rows = objective_rows(rows, config.objective)
        soft = config.soft_labels and "p_chosen" in rows[0]
        margin = config.use_margin and "margin" in rows[0]
        examples, dropped = tokenize_preferences(rows, tokenizer, limits, need_p=soft, hard_labels=not soft)
        for e in examples:
            if margin:
                value = rows[e["index"]].get("margin")
                if not isinstance(value, int | float) or value != value:
                    raise DataError(f"preference row {e['index']}: margin must be a number, got {value!r}")
                e["margin"] = float(value)
        return examples, dropped, soft, margin

    examples, dropped, soft, margin = tokenize(config.data)
    if len(examples) < 2:
        raise DataError(f"{config.data}: {len(examples)} usable pair(s) after truncation; a reward model needs more")
    train, held_out = split_eval(examples, config.eval_fraction, config.seed)
    if config.eval_data:
        held_out = tokenize(config.eval_data)[0]
    model = load_reward_model(config.model, config.trust_remote_code, tokenizer=tokenizer, resolved=path)[0]
    if not config.keep_dropout:
        disable_dropout(model)
    if config.lora:
        model = add_lora(model, config, task_type="SEQ_CLS")
    built: list[RewardTrainer] = []  # the loss reads its own trainer's progress

    def progress() -> float:
        return built[0].step / max(built[0].total_steps, 1) if built else 0.0

    collate = lambda b: collate_reward_pairs(b, tokenizer.pad_token_id, soft, margin)  # noqa: E731
    built.append(RewardTrainer(config, model, tokenizer, train, collate, reward_loss_fn(config, progress), held_out,
                               {"task": "rm", "model_path": path, "dropped_examples": dropped, "soft_labels": soft,
                                "margin": margin, "objective": config.objective, "loss": config.loss}))
    return built[0]


