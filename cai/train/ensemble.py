"""Reward-model ensembles, the standard mitigation of reward hacking (Coste et al. 2023): K reward models trained
with different seeds (head initialisation and data order), scored together, combined conservatively.

    cai train rm --data RUN --out outputs/rm --ensemble 4              # outputs/rm/member-{0..3}, ensemble.json
    cai train ppo --reward-model outputs/rm --reward-ensemble min ...   # or mean, mean-minus-std

`combine` is the whole rule: `mean` (plain averaging), `min` (worst case over members) or `mean-minus-std`
(mean - w * std, uncertainty-weighted; w = `ensemble_std_weight`), per response.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

Combine = Literal["mean", "min", "mean-minus-std"]
MANIFEST = "ensemble.json"


def combine(scores: list[list[float]], how: Combine = "mean", std_weight: float = 1.0) -> list[float]:
    """Member scores [K][N] -> one score per response [N]."""
    out = []
    for column in zip(*scores, strict=True):
        mean = sum(column) / len(column)
        if how == "mean":
            out.append(mean)
        elif how == "min":
            out.append(min(column))
        else:
            std = math.sqrt(sum((s - mean) ** 2 for s in column) / len(column))
            out.append(mean - std_weight * std)
    return out


def is_ensemble(path: str | Path | None) -> bool:
    return path is not None and (Path(path) / MANIFEST).is_file()


def members(path: str | Path) -> list[str]:
    data = json.loads((Path(path) / MANIFEST).read_text())
    return [str(Path(path) / name) for name in data["members"]]


def train_ensemble(config: Any, prepare: Any = None) -> dict[str, float]:
    """Train `config.ensemble` reward (or cost) models into OUT/member-i (seed + i each) with `prepare` and write
    OUT/ensemble.json; returns the members' mean final metrics."""
    from cai.store import write_json_atomic
    from cai.train.reward import prepare_reward

    prepare = prepare or prepare_reward
    out = Path(config.out)
    finals, names = [], []
    for i in range(config.ensemble):
        name = f"member-{i}"
        member = config.model_copy(update={"seed": config.seed + i, "out": str(out / name), "ensemble": 1})
        finals.append(prepare(member).train())
        names.append(name)
    write_json_atomic(out / MANIFEST, {"members": names, "seeds": [config.seed + i for i in range(config.ensemble)],
                                       "data": config.data})
    keys = set.intersection(*(set(f) for f in finals))
    return {k: sum(f[k] for f in finals) / len(finals) for k in keys if isinstance(finals[0][k], int | float)}


class EnsembleScorer:
    """Scores with every member (`RewardScorer` each) and combines per response."""

    def __init__(self, path: str, how: Combine = "mean", std_weight: float = 1.0, **scorer: Any):
        from cai.train.reward import RewardScorer

        self.scorers = [RewardScorer(m, **scorer) for m in members(path)]
        self.how, self.std_weight, self.path = how, std_weight, path

    def score(self, prompts: list, responses: list) -> list[float]:
        return combine([s.score(prompts, responses) for s in self.scorers], self.how, self.std_weight)


def make_scorer(path: str, how: Combine = "mean", std_weight: float = 1.0, **scorer: Any) -> Any:
    """An `EnsembleScorer` for an ensemble folder, else a single `RewardScorer`."""
    from cai.train.reward import RewardScorer

    return EnsembleScorer(path, how, std_weight, **scorer) if is_ensemble(path) else RewardScorer(path, **scorer)
