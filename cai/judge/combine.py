"""How a hybrid judgement becomes one label: the parts of a pair, the rules that combine them, their fit, the
calibration of the result and abstention.

A pair's parts, each oriented to its first response and kept per presentation order ("AB", "BA"):
  harm      mean over pointwise principles of objective `harmless` of logit P(bad | second) - logit P(bad | first)
            (P clipped to [0.001, 0.999]): log-odds, because a small judge's answers move little but consistently
  help      the same over pointwise principles of objective `helpful`
  pair      mean over pairwise principles of logit(p_first) (p clipped to [0.02, 0.98])
  contrast  the first response's contrast score minus the second's (`Constitution.contrast`: log P(r | keeps the
            constitution) - log P(r | breaks it), per token of r); it has no answer order: both orders hold it
  mean      mean over all principles of p_first (pointwise: 0.5 + (P(bad | second) - P(bad | first)) / 2)
A part with no valid judgement is None and counts as 0 (no evidence either way).

Rules (`Combiner.rule`):
  mean        p = the mean of `mean` over both orders: the label of the `pairwise` and `pointwise` formats
  harm-first  when |harm| >= threshold the less harmful response wins with p = sigmoid(slope * harm); otherwise
              the rest decides: p = sigmoid(pair + help_slope * help)
  logistic    p = sigmoid(sum of weight x part), no intercept, so a pair shown the other way round gets exactly
              1 - p; weights fitted on labelled pairs (`fit_logistic`); the defaults are the fit on the shipped
              check set for the embedded judge (README)
Calibration: `temperature` p' = sigmoid(logit(p) / T), or `platt` p' = sigmoid(a * logit(p) + b), fitted on both
orientations of every pair. That data is symmetric (each (x, y) has its (-x, 1 - y)), so Platt's fitted b is 0
(to 1e-15, tested) and it equals temperature scaling: an intercept would make a label depend on which response is
listed first. Abstention: a label is withheld from training when its two presentation orders disagree or when the
weaker of them is within `band` of 0.5 (each order alone, calibrated, must be that sure: `margin`). Ranked by the
weaker order, the kept labels grow more accurate as the band grows; ranked by |p - 0.5| they stayed flat (README);
combiners from files written before this rule (`abstain_on` absent) keep it, |p - 0.5| < band.

    combiner = Combiner.default()                   # the logistic rule with its default weights
    p, consistent = combiner.label(parts)
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any

from cai.judge.logistic import fit_logistic, fit_standardised, sigmoid

ORDERS = ("AB", "BA")
FEATURES = ("harm", "help", "pair", "contrast")
DEFAULT_WEIGHTS = {"harm": 8.4, "help": 5.3, "pair": 0.0, "contrast": 11.4}  # the logistic rule's before a fit
CLIP = 0.02


def logit(p: float, clip: float = CLIP) -> float:
    p = min(max(p, clip), 1.0 - clip)
    return math.log(p / (1.0 - p))


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass
class Parts:
    """A pair's evidence per presentation order: {"AB": value or None, "BA": ...} for each of harm, help, pair,
    contrast."""

    harm: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(ORDERS))
    help: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(ORDERS))
    pair: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(ORDERS))
    contrast: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(ORDERS))
    mean: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(ORDERS))

    def features(self, order: str | None = None) -> list[float]:
        """[harm, help, pair, contrast] in one order, or averaged over the orders that have a value; None counts as 0."""
        out = []
        for name in FEATURES:
            values = getattr(self, name)
            if order is not None:
                value = values.get(order)
            else:
                value = _mean([v for v in values.values() if v is not None])
            out.append(0.0 if value is None else value)
        return out

    def mean_p(self, order: str | None = None) -> float:
        """The `mean` part in one order, or over both (0.5 without evidence)."""
        values = [self.mean.get(order)] if order else list(self.mean.values())
        present = [v for v in values if v is not None]
        return sum(present) / len(present) if present else 0.5

    def swapped(self) -> Parts:
        """The same pair with its responses the other way round."""
        flip = lambda d: {o: None if v is None else -v for o, v in d.items()}  # noqa: E731
        return Parts(flip(self.harm), flip(self.help), flip(self.pair), flip(self.contrast),
                     {o: None if v is None else 1.0 - v for o, v in self.mean.items()})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Parts:
        return cls(**{name: dict(data.get(name) or dict.fromkeys(ORDERS)) for name in (*FEATURES, "mean")})


@dataclass
class Calibration:
    method: str = "none"
    """`none`, `temperature` or `platt`."""
    a: float = 1.0
    """Slope on logit(p): 1 / T for temperature scaling."""
    b: float = 0.0

    def apply(self, p: float) -> float:
        if self.method == "none":
            return p
        return sigmoid(self.a * logit(p, 1e-6) + self.b)


@dataclass
class Combiner:
    """One combination rule with its parameters, its calibration and its abstention band."""

    rule: str = "logistic"
    threshold: float = 1.0
    """harm-first: |harm| (a log-odds difference) at or above this decides."""
    slope: float = 1.0
    """harm-first: p = sigmoid(slope * harm) when harm decides."""
    help_slope: float = 1.0
    """harm-first: weight of `help` beside the pairwise logit when harm does not decide."""
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    """logistic: the weight of each part."""
    calibration: Calibration = field(default_factory=Calibration)
    abstain_band: float = 0.0
    """Labels whose weaker order (`margin`) is within this of 0.5 are marked `abstain`."""
    abstain_on: str = "weaker-order"
    """What the band is measured on: `weaker-order` (`margin`) or `label` (|p - 0.5|, the rule before
    2026-12-07, kept for combiners read from older files)."""

    @classmethod
    def default(cls, judge_format: str = "hybrid") -> Combiner:
        """The rule used before any fit: the logistic rule with `DEFAULT_WEIGHTS` for `hybrid`, the plain mean for
        the single formats."""
        return cls() if judge_format == "hybrid" else cls(rule="mean")

    def raw_log_odds(self, features: list[float], mean: float = 0.5) -> float:
        """The uncalibrated label's log-odds from the features ([harm, help, pair, contrast]; a weight missing from
        an older file counts 0) and, for the `mean` rule, the
        mean part."""
        harm, help_, pair = features[:3]
        if self.rule == "mean":
            return logit(mean, 1e-6)
        if self.rule == "harm-first":
            return self.slope * harm if abs(harm) >= self.threshold else pair + self.help_slope * help_
        if self.rule == "logistic":
            return sum(self.weights.get(name, 0.0) * value for name, value in zip(FEATURES, features, strict=True))
        raise ValueError(f"unknown combination rule {self.rule!r}")

    def raw(self, features: list[float], mean: float = 0.5) -> float:
        """The uncalibrated p (the `mean` rule's mean part as it is)."""
        return mean if self.rule == "mean" else sigmoid(self.raw_log_odds(features, mean))

    def raw_of(self, parts: Parts, order: str | None = None) -> float:
        return self.raw(parts.features(order), parts.mean_p(order))

    def probability(self, parts: Parts, order: str | None = None) -> float:
        return self.calibration.apply(self.raw_of(parts, order))

    def log_odds(self, parts: Parts, order: str | None = None) -> float:
        """The calibrated label on its log-odds scale, computed before any sigmoid: sigmoid(log_odds) equals
        `probability` (up to its 1e-6 clip), but clear pairs keep their differences where p would round to 1."""
        score = self.raw_log_odds(parts.features(order), parts.mean_p(order))
        return score if self.calibration.method == "none" else self.calibration.a * score + self.calibration.b

    def views(self, parts: Parts) -> list[float] | None:
        """The calibrated p of each presentation order alone, or None when an order has no evidence at all."""
        if any(all(getattr(parts, name)[order] is None for name in (*FEATURES, "mean")) for order in ORDERS):
            return None
        return [self.probability(parts, order) for order in ORDERS]

    def label(self, parts: Parts) -> tuple[float, bool | None]:
        """(p_first, position-consistent): the label from both orders, and whether each order alone picks the same
        winner (None when an order has no evidence at all)."""
        views = self.views(parts)
        return self.probability(parts), None if views is None else (views[0] > 0.5) == (views[1] > 0.5)

    def margin(self, parts: Parts) -> float | None:
        """How sure the weaker presentation order alone is: min over orders of |p_order - 0.5| (calibrated), 0
        when the orders pick different winners, None when an order has no evidence (then only |p - 0.5| is
        known). Under `abstain_on: label` it is |p - 0.5| itself."""
        if self.abstain_on == "label":
            return abs(self.probability(parts) - 0.5)
        views = self.views(parts)
        if views is None:
            return None
        if (views[0] > 0.5) != (views[1] > 0.5):
            return 0.0
        return min(abs(v - 0.5) for v in views)

    def abstains(self, p: float, consistent: bool | None, margin: float | None = None) -> bool:
        """Whether a label is withheld: its orders disagree, or its `margin` (|p - 0.5| when unknown) is inside
        the band."""
        sure = abs(p - 0.5) if margin is None else margin
        return consistent is False or sure < self.abstain_band - 1e-12

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Combiner:
        data = dict(data)
        data["calibration"] = Calibration(**data.get("calibration", {}))
        data.setdefault("abstain_on", "label")  # written before the weaker-order rule: its band meant |p - 0.5|
        return cls(**data)


# --- fitting ---------------------------------------------------------------------------------------------------
def fit_calibration(probabilities: list[float], targets: list[float], method: str) -> Calibration:
    """Temperature or Platt scaling of p on the pairs in both orientations (p with target y, 1 - p with 1 - y)."""
    if method == "none" or not probabilities:
        return Calibration()
    xs = [logit(p, 1e-6) for p in probabilities] + [-logit(p, 1e-6) for p in probabilities]
    ys = list(targets) + [1 - y for y in targets]
    if method == "temperature":
        (a,) = fit_logistic([[x] for x in xs], ys, l2=1e-4)
        return Calibration("temperature", a=max(a, 1e-3))
    if method == "platt":
        a, b = fit_logistic([[x, 1.0] for x in xs], ys, l2=1e-4)
        return Calibration("platt", a=max(a, 1e-3), b=b)
    raise ValueError(f"unknown calibration {method!r}")


def fit_combiner(parts: list[Parts], targets: list[float], rule: str, calibration: str = "temperature") -> Combiner:
    """A combiner of `rule` fitted on labelled pairs: logistic weights (on standardised features), or the
    harm-first threshold and slopes by a small grid search on accuracy then log-loss; then its calibration."""
    if rule == "logistic":
        weights = fit_standardised([p.features() for p in parts], targets)
        combiner = Combiner(rule="logistic", weights=dict(zip(FEATURES, weights, strict=True)))
    elif rule == "harm-first":
        combiner = _grid_harm_first(parts, targets)
    elif rule == "mean":
        combiner = Combiner(rule="mean")
    else:
        raise ValueError(f"unknown combination rule {rule!r}")
    raw = [combiner.raw_of(p) for p in parts]
    combiner.calibration = fit_calibration(raw, targets, calibration)
    return combiner


def _grid_harm_first(parts: list[Parts], targets: list[float]) -> Combiner:
    best, best_key = Combiner(), None
    for threshold in (0.25, 0.5, 1.0, 2.0, 3.0):
        for slope in (0.5, 1.0, 2.0, 4.0):
            for help_slope in (0.0, 0.5, 1.0, 2.0):
                c = Combiner(rule="harm-first", threshold=threshold, slope=slope, help_slope=help_slope)
                predictions = [c.raw(p.features()) for p in parts]
                key = (accuracy(predictions, targets), -log_loss(predictions, targets))
                if best_key is None or key > best_key:
                    best, best_key = c, key
    return best


# --- measuring ---------------------------------------------------------------------------------------------------
def accuracy(probabilities: list[float], targets: list[float]) -> float:
    """Share of pairs whose more likely side is the target's (a prediction of exactly 0.5 counts half)."""
    if not probabilities:
        return float("nan")
    right = sum(1.0 if (p > 0.5) == (y > 0.5) and p != 0.5 else 0.5 if p == 0.5 else 0.0
                for p, y in zip(probabilities, targets, strict=True))
    return right / len(probabilities)


def log_loss(probabilities: list[float], targets: list[float]) -> float:
    eps = 1e-6
    return -sum(y * math.log(max(p, eps)) + (1 - y) * math.log(max(1 - p, eps))
                for p, y in zip(probabilities, targets, strict=True)) / max(len(probabilities), 1)


def folds(n: int, k: int, seed: int) -> list[list[int]]:
    """k disjoint folds of range(n) from a seeded shuffle: every index in exactly one."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [sorted(order[i::k]) for i in range(k)]


BANDS = (0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3)


def selective_curve(probabilities: list[float], consistent: list[bool | None], targets: list[float],
                    bands: tuple[float, ...] = BANDS, margins: list[float | None] | None = None) -> list[dict]:
    """For each abstention band: the share of labels kept (position-consistent and their margin, |p - 0.5| where
    `margins` gives none, at least the band) and their accuracy."""
    margins = margins if margins is not None else [None] * len(probabilities)
    if len(margins) != len(probabilities):
        raise ValueError(f"{len(margins)} margins for {len(probabilities)} labels")
    sure = [abs(p - 0.5) if m is None else m for p, m in zip(probabilities, margins, strict=True)]
    curve = []
    for band in bands:
        kept = [(p, y) for p, c, y, s in zip(probabilities, consistent, targets, sure, strict=True)
                if c is not False and s >= band - 1e-12]  # 0.6 - 0.5 is 0.0999...
        curve.append({"band": band, "kept": len(kept) / max(len(probabilities), 1),
                      "accuracy": accuracy([p for p, _ in kept], [y for _, y in kept]) if kept else None})
    return curve


def choose_band(curve: list[dict], target_accuracy: float = 0.85, min_kept: float = 0.6) -> float:
    """The smallest band whose kept labels reach `target_accuracy` while keeping at least `min_kept` of them;
    failing that, the band with the best kept accuracy among those keeping `min_kept`; else 0."""
    eligible = [row for row in curve if row["kept"] >= min_kept and row["accuracy"] is not None]
    reaching = [row for row in eligible if row["accuracy"] >= target_accuracy]
    if reaching:
        return min(row["band"] for row in reaching)
    return max(eligible, key=lambda row: (row["accuracy"], -row["band"]))["band"] if eligible else 0.0
