"""What one line of a judge run's records.jsonl holds: the schema the export, the report, the review and the judge
check read by attribute.

    records = read_typed(run, JudgeRecord)        # cai.runs.records
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cai.runs.records import Record


class JudgeRecord(Record):
    """A judged pair: its two responses, every judgement, the label and how far it can be trusted."""

    pair_sha: str | None = None
    """Digest of the pair's content: a pair edited under the same id is judged again."""
    prompt: list[dict[str, str]] = Field(default_factory=list)
    first: str = ""
    second: str = ""
    meta: dict[str, Any] = Field(default_factory=dict)
    """Where the responses came from (`first`/`second` names, the source sample) and the pair's own columns."""
    principle_ids: list[str] = Field(default_factory=list)
    p_first: float | None = None
    """The label: P(the first response is better), calibrated."""
    p_raw: float | None = None
    position_consistency: float | None = None
    n_valid: int = 0
    n_principles: int = 0
    n_unpaired: int = 0
    reason: str | None = None
    abstain: bool = False
    parts: dict[str, Any] | None = None
    judgements: list[dict[str, Any]] = Field(default_factory=list)
    objectives: dict[str, dict[str, Any]] | None = None
    """`--objectives` runs: each objective's label (p_first, position consistency, principle ids, validity)."""
    unsafe_first: float | None = None
    unsafe_second: float | None = None
    raw: Any = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class JudgeStats(BaseModel):
    """`export/stats.json` of a judge run (written by the export, read by `cai judge`'s summary, the report and the
    review): what was kept for training and what was left out, and why."""

    model_config = ConfigDict(extra="allow")

    kept: int
    ties: int
    invalid: int
    abstained: int
    human_labels: int
    length_bias: dict[str, Any]
    review_left_out: dict[str, int] | None = None
    dropped_low_confidence: int = 0
    dropped_inconsistent: int = 0
    dropped_unreviewed: int = 0
    objectives: list[str] | None = None
    objective_disagreement: float | None = None
