"""Training reward-model ensembles, the standard mitigation of reward hacking (Coste et al. 2023): K reward (or
cost) models trained with different seeds (head initialisation and data order), each centred by its mean score on
its own training responses (`offsets` in ensemble.json); scoring them together is `cai/train/scoring.py`.

    cai train rm --data RUN --out outputs/rm --ensemble 4              # outputs/rm/member-{0..3}, ensemble.json
    cai train ppo --reward-model outputs/rm --reward-ensemble min ...   # or mean, mean-minus-std
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cai.train.scoring import MANIFEST


def train_ensemble(config: Any, prepare: Any = None) -> dict[str, float]:
    """Train `config.ensemble` reward (or cost) models into OUT/member-i (seed + i each) with `prepare` and write
    OUT/ensemble.json; returns the members' mean final metrics."""
    from cai.runs.store import write_json_atomic
    from cai.train.outputs import check_output, train_fields
    from cai.train.reward import prepare_reward

    prepare = prepare or prepare_reward
    out = Path(config.out)
    names = [f"member-{i}" for i in range(config.ensemble)]
    plan = [config.model_copy(update={"seed": config.seed + i, "out": str(out / name), "ensemble": 1})
            for i, name in enumerate(names)]
    for member in plan:  # every member's folder is checked before any trains
        check_output(member)
    state = _read_state(out)
    finished = state.get("finished", []) if config.resume else []
    header = {**train_fields(config), "members": names, "seeds": [config.seed + i for i in range(config.ensemble)],
              "data": config.data}
    finals = []
    for name, member in zip(names, plan, strict=True):
        if name in finished:
            print(f"cai: ensemble {name} finished earlier, kept")
            finals.append(state["finals"][name])
            continue
        finals.append(prepare(member).train())
        finished.append(name)
        state.setdefault("finals", {})[name] = finals[-1]
        state.setdefault("offsets", {})[name] = member_offset(member)
        write_json_atomic(out / MANIFEST, {**header, "finished": finished, "finals": state["finals"],
                                           "offsets": state["offsets"]})
    write_json_atomic(out / MANIFEST, {**header, "finished": finished, "finals": state.get("finals", {}),
                                       "offsets": state.get("offsets", {})})
    keys = set.intersection(*(set(f) for f in finals))
    return {k: sum(f[k] for f in finals) / len(finals) for k in keys if isinstance(finals[0][k], int | float)}


def member_offset(config: Any, limit: int = 128) -> float:
    """A member's mean score over (up to `limit`) responses of its training pairs, chosen and rejected: the
    constant that centres it beside the other members."""
    from cai.train.data import Truncation, load_rows
    from cai.train.scoring import RewardScorer

    rows = load_rows(config.data, config.split, "rm")[: limit // 2]
    scorer = RewardScorer(config.out, limits=Truncation(config.max_length, config.max_prompt_length),
                          trust_remote_code=config.trust_remote_code)
    prompts = [row["prompt"] for row in rows for _ in (0, 1)]
    responses = [row[column] for row in rows for column in ("chosen", "rejected")]
    if isinstance(prompts[0], str):
        prompts = [[{"role": "user", "content": p}] for p in prompts]
    scores = scorer.score(prompts, responses)
    return sum(scores) / len(scores)


def _read_state(out: Path) -> dict:
    from cai.runs.store import read_manifest

    return read_manifest(out / MANIFEST) if (out / MANIFEST).is_file() else {}


