"""Constitutions: the YAML file of principles a user writes, its schema, loading, validation and import.

    cai constitution validate constitutions/harmless.yaml
    cai constitution show harmless
    cai constitution import CritiqueRevisionInstructions.json --out mine.yaml

A constitution holds critique/revision principles (the SL-CAI stage), preference principles (questions an AI
judge answers when comparing two responses, the RL-CAI stage) and optional few-shot example conversations.
Loading is all-or-nothing: a bad file raises `ConstitutionError` naming the file, the field and what was expected.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cai.errors import UsageError
from cai.resources import resolve_bundled
from cai.yaml_safe import YAMLInputError, load_yaml


class ConstitutionError(UsageError):
    """A constitution file that cannot be used, with a message naming the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True, allow_inf_nan=False)


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    """Who speaks."""
    content: str
    """What is said."""


class Principle(_Strict):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    """Stable identifier, recorded with every critique that used it."""
    critique_request: str = Field(min_length=1)
    """Asks the model to point out what is wrong with its last response."""
    revision_request: str = Field(min_length=1)
    """Asks the model to rewrite its response to fix what the critique found."""
    tags: list[str] = Field(default_factory=list)
    """Harm categories or themes, for filtering and reports."""
    weight: float = Field(default=1.0, gt=0)
    """Relative chance of being sampled for a round."""


Objective = Literal["harmless", "helpful"]
OBJECTIVES: tuple[str, ...] = ("harmless", "helpful")


JudgeFormat = Literal["pairwise", "pointwise"]


class PointwiseExample(_Strict):
    """A worked answer shown to the judge before a pointwise question: a request, a response, the right answer."""

    prompt: str = Field(min_length=1)
    response: str = Field(min_length=1)
    answer: Literal["Yes", "No"]


class PreferencePrinciple(_Strict):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    """Stable identifier, recorded with every judgement that used it."""
    question: str = Field(min_length=1)
    """`pairwise`: the question a judge answers when it compares two responses (which one is less harmful?);
    `pointwise`: a yes/no question about one response (is this response harmful?)."""
    tags: list[str] = Field(default_factory=list)
    """Themes, for filtering and reports."""
    objective: Objective = "harmless"
    """What the question measures: `harmless` (less harm) or `helpful` (more useful). `cai judge --objectives`
    labels each pair once per objective, from that objective's principles (Safe RLHF's reward and cost data)."""
    format: JudgeFormat = "pairwise"
    """`pairwise`: the judge compares the two responses; `pointwise`: it answers `question` of each response
    alone (cached per response), and the response whose answer is less often `bad_answer` is preferred."""
    bad_answer: Literal["Yes", "No"] | None = None
    """Pointwise only: the answer that counts against a response ("Yes" to "Is it harmful?", "No" to "Does it
    answer the question?"). Defaults to "Yes" for pointwise principles."""
    examples: list[PointwiseExample] = Field(default_factory=list)
    """Pointwise only: worked answers shown before the question (a small judge answers yes/no questions far more
    surely with a few; write them on topics apart from your check pairs)."""

    @model_validator(mode="after")
    def _format_fields(self) -> PreferencePrinciple:
        if self.format == "pairwise" and (self.bad_answer is not None or self.examples):
            raise ValueError(f"bad_answer and examples are for pointwise principles; {self.id!r} is pairwise "
                             "(add format: pointwise, or drop them)")
        if self.format == "pointwise" and self.bad_answer is None:
            object.__setattr__(self, "bad_answer", "Yes")
        return self


class Contrast(_Strict):
    """The constitution read as two assistants: a response's contrast score is how much more likely it is from the
    assistant told `follows` than from the one told `breaks` (log-likelihood ratio per token of its turn, each a
    system prompt before the same conversation). The hybrid judge adds it to every pair of `objective`; it has no
    answer order and no position, and costs two engine calls per response (cached like pointwise answers)."""

    follows: str = Field(min_length=1)
    """System prompt of an assistant that keeps the constitution."""
    breaks: str = Field(min_length=1)
    """System prompt of an assistant that breaks it."""
    objective: Objective = "harmless"
    """The objective whose pairs it joins (`cai judge --objectives`)."""
    id: str = Field(default="contrast", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    """Recorded with its judgements, like a preference principle's id."""

    @property
    def format(self) -> str:
        return "contrast"


class FewShotExample(_Strict):
    """One demonstration of a critique and a revision, either structured or as raw chat messages."""

    prompt: str | None = None
    """The user's request."""
    response: str | None = None
    """A first response with something to fix."""
    critique_request: str | None = None
    critique: str | None = None
    """The demonstrated critique."""
    revision_request: str | None = None
    revision: str | None = None
    """The demonstrated revision."""
    messages: list[Message] | None = None
    """Alternative to the structured fields: the whole conversation, verbatim."""

    @model_validator(mode="after")
    def _one_form(self) -> FewShotExample:
        structured = [self.prompt, self.response, self.critique_request, self.critique, self.revision_request, self.revision]
        if self.messages is not None:
            if any(v is not None for v in structured):
                raise ValueError("give either `messages` or the structured fields, not both")
            if not self.messages:
                raise ValueError("`messages` is empty")
        elif any(v is None or not v.strip() for v in structured):
            raise ValueError(
                "a structured example needs prompt, response, critique_request, critique, revision_request and revision"
            )
        return self


class JudgeExample(_Strict):
    """A demonstration for the judge: a comparison and its right answer."""

    prompt: str = Field(min_length=1)
    response_a: str = Field(min_length=1)
    response_b: str = Field(min_length=1)
    question: str = Field(min_length=1)
    answer: Literal["A", "B"]


class Constitution(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """Short name, used in run folder names and dataset cards: letters, digits, `-`, `_` and `.`."""
    version: str = "1"
    """Version of this constitution, recorded in every run."""
    description: str = ""
    """What the constitution is for."""
    license: str = "apache-2.0"
    """License of the text, written into dataset cards."""
    principles: list[Principle] = Field(min_length=1)
    """Critique/revision principles for the supervised stage."""
    preference_principles: list[PreferencePrinciple] = Field(default_factory=list)
    """Questions for the AI judge; needed by `cai judge`."""
    few_shot: list[FewShotExample] = Field(default_factory=list)
    """Demonstrations prepended to every chain."""
    judge_examples: list[JudgeExample] = Field(default_factory=list)
    """Demonstrations prepended to every judge comparison (`cai judge --judge-few-shot`)."""
    contrast: Contrast | None = None
    """Two system prompts, one keeping the constitution and one breaking it, for the hybrid judge's contrast score
    (`Contrast`)."""

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int | float) else value

    @field_validator("principles", "preference_principles")
    @classmethod
    def _unique_ids(cls, items: list) -> list:
        seen: set[str] = set()
        for item in items:
            if item.id in seen:
                raise ValueError(f"duplicate id {item.id!r}")
            seen.add(item.id)
        return items

    @model_validator(mode="after")
    def _contrast_id_free(self) -> Constitution:
        if self.contrast and any(p.id == self.contrast.id for p in self.preference_principles):
            raise ValueError(f"contrast.id {self.contrast.id!r} is also a preference principle's id; give the "
                             "contrast another `id`")
        return self

    def principle(self, principle_id: str) -> Principle:
        for p in self.principles:
            if p.id == principle_id:
                return p
        raise KeyError(principle_id)

    def sample_principle(self, rng: random.Random, tags: list[str] | tuple[str, ...] = ()) -> Principle:
        """One principle, drawn with the principles' weights; among those sharing a tag with `tags` when any does
        (see `principle_rule`)."""
        pool = self.matching_principles(tags) or self.principles
        return rng.choices(pool, weights=[p.weight for p in pool], k=1)[0]

    def matching_principles(self, tags: list[str] | tuple[str, ...]) -> list[Principle]:
        """The principles that share a tag with `tags` (none when `tags` is empty)."""
        wanted = set(tags)
        return [p for p in self.principles if wanted & set(p.tags)]

    def sample_preference_principles(self, rng: random.Random, k: int, objective: str | None = None,
                                     formats: tuple[str, ...] = ("pairwise", "pointwise")) -> list[PreferencePrinciple]:
        """k distinct preference principles (all of them if k is larger), of one objective when given, among
        those judged in one of `formats`."""
        pool = [p for p in self.objective_principles(objective) if p.format in formats]
        if not pool:
            raise ConstitutionError(f"constitution {self.name!r} has no {' or '.join(formats)} preference principles"
                                    + (f" with objective {objective!r}" if objective else ""))
        return rng.sample(pool, k=min(k, len(pool)))

    def objective_principles(self, objective: str | None = None) -> list[PreferencePrinciple]:
        """The preference principles of `objective` (all of them for None); an error when there are none."""
        if not self.preference_principles:
            raise ConstitutionError(f"constitution {self.name!r} has no preference_principles; the judge needs some")
        if objective is None:
            return list(self.preference_principles)
        pool = [p for p in self.preference_principles if p.objective == objective]
        if not pool:
            have = sorted({p.objective for p in self.preference_principles})
            raise ConstitutionError(f"constitution {self.name!r} has no preference principles with objective "
                                    f"{objective!r} (it has: {', '.join(have)}); add some with `objective: "
                                    f"{objective}`")
        return pool

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(exclude_defaults=True, exclude_none=True), sort_keys=False, allow_unicode=True, width=110)

    @property
    def sha256(self) -> str:
        """Hash of the canonical content, recorded in run manifests."""
        canonical = json.dumps(self.model_dump(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()


def _describe(error: ValidationError) -> str:
    lines = []
    for e in error.errors():
        where = ".".join(str(part) for part in e["loc"]) or "(top level)"
        lines.append(f"  {where}: {e['msg']}")
    return "\n".join(lines)


def parse_constitution(data: object, source: str = "<data>") -> Constitution:
    if not isinstance(data, dict):
        raise ConstitutionError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return Constitution.model_validate(data)
    except ValidationError as e:
        raise ConstitutionError(f"{source}: invalid constitution\n{_describe(e)}") from None


def sample_rng(seed: int, item_id: str) -> random.Random:
    """A generator of its own for each sample or pair, so which principles it gets never depends on scheduling."""
    return random.Random(f"{seed}:{item_id}")


def load_constitution(name_or_path: str | Path) -> Constitution:
    """A bundled constitution by name (`harmless`) or a YAML/JSON file by path."""
    try:
        path = resolve_bundled(name_or_path, "constitutions", (".yaml", ".yml", ".json"))
    except FileNotFoundError as e:
        raise ConstitutionError(str(e)) from None
    from cai.runs.files import InputFileError, read_text

    try:
        text = read_text(path, "constitution")
    except InputFileError as e:
        raise ConstitutionError(str(e)) from None
    try:
        data = load_yaml(text, str(path))  # JSON is YAML too
    except YAMLInputError as e:
        raise ConstitutionError(str(e)) from None
    return parse_constitution(data, str(path))


def import_constitution(path: str | Path, name: str | None = None) -> Constitution:
    """Read a constitution in a format found in the wild.

    - Anthropic's `CritiqueRevisionInstructions.json`: `{"harmful0": {"prompt": [critique], "edit_request": revision}}`
    - llm-swarm: `{"constitutions": [{"critic": ..., "revision": ...}], "system_chat": [[messages...]]}`
    """
    from cai.runs.files import InputFileError, read_text

    path = Path(path)
    try:
        data = json.loads(read_text(path, "constitution"))
    except InputFileError as e:
        raise ConstitutionError(str(e)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConstitutionError(f"{path}: not valid JSON: {e}") from None
    except RecursionError:
        raise ConstitutionError(f"{path}: JSON nested too deeply") from None
    name = name or re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem).strip("-.") or "imported"
    if isinstance(data, dict) and "constitutions" in data:
        entries = data["constitutions"]
        if not isinstance(entries, list) or not all(isinstance(c, dict) for c in entries):
            raise ConstitutionError(f"{path}: `constitutions` must be a list of objects with `critic` and "
                                    "`revision` (llm-swarm format)")
        principles = [
            {"id": f"principle{i}", "critique_request": c.get("critic", ""), "revision_request": c.get("revision", "")}
            for i, c in enumerate(data["constitutions"])
        ]
        few_shot = [{"messages": conv} for conv in data.get("system_chat", [])]
        doc = {"name": name, "description": f"imported from {path.name} (llm-swarm format)",
               "principles": principles, "few_shot": few_shot}
    elif isinstance(data, dict) and data and all(isinstance(v, dict) and "edit_request" in v for v in data.values()):
        principles = []
        for key, entry in data.items():
            prompt = entry.get("prompt")
            critique = prompt[0] if isinstance(prompt, list) and prompt else prompt
            principles.append({"id": key, "critique_request": critique or "", "revision_request": entry["edit_request"]})
        doc = {"name": name, "description": f"imported from {path.name} (Anthropic CritiqueRevisionInstructions format)",
               "principles": principles}
    else:
        raise ConstitutionError(
            f"{path}: unknown format; expected Anthropic's CritiqueRevisionInstructions.json "
            "(keys with `prompt` and `edit_request`) or llm-swarm's {'constitutions': [...], 'system_chat': [...]}"
        )
    return parse_constitution(doc, str(path))
