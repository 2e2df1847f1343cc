"""`cai train cost`: Safe RLHF's cost model (Dai et al. 2023), a one-output sequence classifier whose score rises
with harm, trained on the harmlessness labels of `cai judge --objectives helpful,harmless`.

    cai judge outputs/quickstart --objectives helpful,harmless --out outputs/judged
    cai train cost --data outputs/judged --out outputs/cost
    cai train ppo ... --reward-model outputs/rm --cost-model outputs/cost --cost-limit 0

The loss (`losses.cost_loss`): Bradley-Terry on the pairs, the more harmful response costing more (soft target
`p_harmless`), plus a classification term putting a response the judge calls harmful (`unsafe_*`, a soft target
too) above 0 and a safe one below, so cost 0 is the safe/unsafe boundary PPO's cost limit refers to. The saved
folder is a plain `AutoModelForSequenceClassification` checkpoint, like a reward model's.
"""

from __future__ import annotations

import math

import torch

from cai.train.config import CostConfig
from cai.train.data import DataError, Truncation, objective_rows, preference_rows, tokenize_preferences
from cai.train.loop import Trainer
from cai.train.losses import cost_loss
from cai.train.modeling import add_lora, disable_dropout, load_tokenizer
from cai.train.reward import collate_reward_pairs, held_out_scores
from cai.train.scoring import load_reward_model, sequence_scores
from cai.train.sft import split_eval


def _unsafe(value: object, index: int, column: str) -> float:
    if value is None:
        return math.nan  # the judge gave no usable yes/no answer: no classification target
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise DataError(f"preference row {index}: {column} must be a probability or null, got {value!r}")
    return float(value)


def collate_cost_pairs(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    batch = collate_reward_pairs(examples, pad_id, soft=True, margin=False)
    for column in ("unsafe_chosen", "unsafe_rejected"):
        batch[column] = torch.tensor([e[column] for e in examples], dtype=torch.float32)
    return batch


def cost_loss_fn(config: CostConfig):
    def loss_fn(model, batch):
        costs = sequence_scores(model, batch["input_ids"], batch["attention_mask"])
        half = costs.shape[0] // 2
        losses, metrics = cost_loss(costs[:half], costs[half:], batch["p_chosen"], batch["unsafe_chosen"],
                                    batch["unsafe_rejected"], config.classification_weight)
        return losses.mean(), metrics, int(batch["attention_mask"].sum())

    return loss_fn


class CostTrainer(Trainer):
    """The shared loop; evaluation measures pair accuracy, sign accuracy and Brier over the whole split."""

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        losses, pair_hits, costs, targets = [], [], [], []
        for _, batch, scores in held_out_scores(self):
            half = scores.shape[0] // 2
            loss, _ = cost_loss(scores[:half], scores[half:], batch["p_chosen"], batch["unsafe_chosen"],
                                batch["unsafe_rejected"], self.config.classification_weight)
            losses += loss.tolist()
            pair_hits += (scores[half:] > scores[:half]).float().tolist()
            costs += scores.tolist()
            targets += batch["unsafe_chosen"].tolist() + batch["unsafe_rejected"].tolist()
        known = [(c, u) for c, u in zip(costs, targets, strict=True) if not math.isnan(u)]
        result = {"eval/loss": sum(losses) / len(losses), "eval/costs/pair_accuracy": sum(pair_hits) / len(pair_hits),
                  "eval/pairs": float(len(pair_hits)), "eval/costs/known_responses": float(len(known))}
        if known:
            result["eval/costs/sign_accuracy"] = sum((c > 0) == (u > 0.5) for c, u in known) / len(known)
            result["eval/costs/brier"] = sum((1 / (1 + math.exp(-c)) - u) ** 2 for c, u in known) / len(known)
        return result


def prepare_cost(config: CostConfig) -> CostTrainer:
    tokenizer, path = load_tokenizer(config.model, config.trust_remote_code)
    limits = Truncation(config.max_length, config.max_prompt_length)

    def tokenize(source: str) -> list[dict]:
        rows = objective_rows(preference_rows(source, config.split, "cost", config.keep_abstained), config.objective)
        if config.classification_weight and not any("unsafe_chosen" in row for row in rows):
            raise DataError(f"{source}: no `unsafe_chosen`/`unsafe_rejected` columns; label the pairs with `cai "
                            "judge ... --objectives helpful,harmless`, or train with --classification-weight 0")
        examples, _ = tokenize_preferences(rows, tokenizer, limits, need_p=True)
        for e in examples:
            for column in ("unsafe_chosen", "unsafe_rejected"):
                e[column] = _unsafe(rows[e["index"]].get(column), e["index"], column)
        return examples

    examples = tokenize(config.data)
    if len(examples) < 2:
        raise DataError(f"{config.data}: {len(examples)} usable pair(s) after truncation; a cost model needs more")
    train, held_out = split_eval(examples, config.eval_fraction, config.seed)
    if config.eval_data:
        held_out = tokenize(config.eval_data)
    model = load_reward_model(config.model, config.trust_remote_code, tokenizer=tokenizer, resolved=path)[0]
    if not config.keep_dropout:
        disable_dropout(model)
    if config.lora:
        model = add_lora(model, config, task_type="SEQ_CLS")
    return CostTrainer(config, model, tokenizer, train, lambda b: collate_cost_pairs(b, tokenizer.pad_token_id),
                       cost_loss_fn(config), held_out,
                       {"task": "cost", "model_path": path, "objective": config.objective,
                        "classification_weight": config.classification_weight,
                        "unknown_unsafe": sum(math.isnan(e[c]) for e in examples
                                              for c in ("unsafe_chosen", "unsafe_rejected"))})
