"""The numbers of a weak-to-strong measurement (Burns et al., arXiv 2312.09390), apart from any model.

    train, test = split_pairs(n, test_fraction=0.5, seed=0)      # disjoint, seeded, every pair in one part
    pgr(weak=0.70, w2s=0.76, ceiling=0.90)                      # 0.30: the student recovered 30% of the gap
    pgr_interval(seeds, "xent", bootstrap=2000, seed=0)         # (low, high, share of resamples with a gap)

Accuracies are pooled over seeds (each seed's held-out pairs are its own); the interval resamples held-out pairs
within each seed, so a seed's spread and the pairs' noise both show.
"""

from __future__ import annotations

import random
from typing import Any


def split_pairs(n: int, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of the training part and the held-out part: a seeded shuffle cut once, so no pair is in both."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = list(range(n))
    random.Random(f"w2s-split-{seed}").shuffle(order)
    n_test = min(max(1, round(n * test_fraction)), n - 1)
    return sorted(order[n_test:]), sorted(order[:n_test])


def pgr(weak: float, w2s: float, ceiling: float) -> float | None:
    """Performance gap recovered: (w2s - weak) / (ceiling - weak); None when the ceiling does not beat the weak
    supervisor (there is no gap to recover, and the ratio would mean nothing)."""
    gap = ceiling - weak
    return None if gap <= 0 else (w2s - weak) / gap


def pooled_accuracy(seeds: list[dict[str, Any]], arm: str) -> float:
    """Share of held-out pairs an arm got right, all seeds together."""
    right = [c for s in seeds for c in s["correct"][arm]]
    return sum(right) / len(right)


def pgr_interval(seeds: list[dict[str, Any]], arm: str, bootstrap: int, seed: int,
                 ceiling_arm: str = "ceiling", weak_arm: str = "weak") -> tuple[float | None, float | None, float]:
    """95% percentile interval of the pooled PGR of `arm`, resampling held-out pairs within each seed (the same
    draw for the weak supervisor, the arm and the ceiling, which are paired on those pairs). Resamples with no
    gap (ceiling <= weak) have no PGR; the third value is the share that had one."""
    rng = random.Random(f"w2s-bootstrap-{seed}")
    values = []
    for _ in range(bootstrap):
        totals = {weak_arm: 0, arm: 0, ceiling_arm: 0}
        n = 0
        for s in seeds:
            m = len(s["correct"][weak_arm])
            for _ in range(m):
                i = rng.randrange(m)
                for name in totals:
                    totals[name] += s["correct"][name][i]
            n += m
        value = pgr(totals[weak_arm] / n, totals[arm] / n, totals[ceiling_arm] / n)
        if value is not None:
            values.append(value)
    if not values:
        return None, None, 0.0
    values.sort()
    low = values[int(0.025 * (len(values) - 1))]
    high = values[int(0.975 * (len(values) - 1))]
    return low, high, len(values) / bootstrap
