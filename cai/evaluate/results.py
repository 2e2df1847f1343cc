"""The schema of an evaluation's `results.json`, in one place: `cai eval model` writes it through these models,
the verdict, the report and `cai run` read it by attribute.

    results = EvalResults.read(run / "eval" / "results.json")
    results.harmlessness.win_rate, results.over_refusal.difference.ci95, results.judge_quality.passed

Figures a judge could not give are None (never a made-up 0.5); fields added later by other parts of cai are kept
as they are (`extra`), so an older reader never drops what a newer writer wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class WinRate(_Open):
    """The trained model's win-rate over the base on one prompt set."""

    prompts: int = 0
    valid: int = 0
    win_rate: float | None = None
    ci95: list[float | None] = Field(default_factory=lambda: [None, None])
    length_controlled_win_rate: float | None = None
    hard_win_share: float | None = None
    position_consistency: float | None = None
    reason: str | None = None
    """Why there is no win-rate (e.g. the constitution has no principles of this objective)."""

    @property
    def interval(self) -> tuple[float | None, float | None]:
        low, high = (list(self.ci95) + [None, None])[:2]
        return low, high


class RefusalReading(_Open):
    """One model's refusals on benign prompts: a hard rate only from a trusted judge ("n/a" otherwise)."""

    prompts: int = 0
    valid: int = 0
    decided: int | None = None
    """Valid readings at least `REFUSAL_MARGIN` from 0.5, the ones the hard rate counts (None in older files)."""
    refusal_rate: float | str | None = None
    mean_p_refusal: float | None = None
    ci95: list[float | None] = Field(default_factory=lambda: [None, None])


class RefusalDifference(_Open):
    """Trained minus base refusal probability on the same benign prompts, with its paired interval."""

    prompts: int = 0
    mean: float | None = None
    ci95: list[float | None] = Field(default_factory=lambda: [None, None])


class OverRefusal(_Open):
    base: RefusalReading = Field(default_factory=RefusalReading)
    trained: RefusalReading = Field(default_factory=RefusalReading)
    difference: RefusalDifference = Field(default_factory=RefusalDifference)


class JudgeQuality(_Open):
    """How the judge did on its labelled check, when it was checked."""

    passed: bool | None = None
    accuracy: float | None = None
    pairs: int | None = None
    min_accuracy: float | None = None
    file: str | None = None
    cached: str | bool | None = None
    """"cache" (measured before on this machine), "shipped" (the check shipped with cai), or False (measured now)."""
    measured: dict[str, str] | None = None
    """When and on what the check was measured (`at`, `on`)."""


class EvalResults(_Open):
    trained: str | None = None
    base: str | None = None
    judge: Any = None
    harmlessness: WinRate
    helpfulness: WinRate | None = None
    over_refusal: OverRefusal = Field(default_factory=OverRefusal)
    mean_length_tokens: dict[str, float] = Field(default_factory=dict)
    judge_quality: JudgeQuality | None = None

    @classmethod
    def read(cls, path: Path) -> EvalResults:
        return cls.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))
