"""The logistic regression behind the hybrid judge's `logistic` rule (cai/judge/combine.py): no intercept, fitted
by Newton's method in plain Python (the systems are 4x4 at most, and the judge needs no numpy or torch at import).

    weights = fit_standardised(rows, targets)     # the rule's fit: every feature scaled alike before the l2
"""

from __future__ import annotations

import math


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def fit_logistic(rows: list[list[float]], targets: list[float], l2: float = 0.01, steps: int = 50,
                 features: int = 4) -> list[float]:
    """Weights w of p = sigmoid(w . x), no intercept, by Newton's method on the mean log-loss plus l2 |w|^2 / 2.
    `targets` are P(first is better) (1 for every pair of a check set, whose first response is the chosen one);
    `features` is the number of weights when there are no rows (the hybrid judge's four parts)."""
    k = len(rows[0]) if rows else features
    w = [0.0] * k
    n = max(len(rows), 1)
    for _ in range(steps):
        grad = [l2 * wi for wi in w]
        hess = [[l2 if i == j else 0.0 for j in range(k)] for i in range(k)]
        for x, y in zip(rows, targets, strict=True):
            p = sigmoid(sum(wi * xi for wi, xi in zip(w, x, strict=True)))
            for i in range(k):
                grad[i] += (p - y) * x[i] / n
                for j in range(k):
                    hess[i][j] += p * (1 - p) * x[i] * x[j] / n
        step = _solve(hess, grad)
        w = [wi - si for wi, si in zip(w, step, strict=True)]
        if max(abs(s) for s in step) < 1e-9:
            break
    return w


def fit_standardised(rows: list[list[float]], targets: list[float]) -> list[float]:
    """`fit_logistic` on each feature divided by its root mean square over `rows` (1 for a feature that is 0
    throughout), the weights returned in the features' own units: the l2 penalty then weighs every feature alike
    whatever its units (a log-odds difference of yes/no answers, a per-token log-likelihood ratio)."""
    k = len(rows[0]) if rows else 4
    scale = [math.sqrt(sum(r[i] ** 2 for r in rows) / len(rows)) if rows else 0.0 for i in range(k)]
    scale = [s if s > 0 else 1.0 for s in scale]
    weights = fit_logistic([[x / s for x, s in zip(r, scale, strict=True)] for r in rows], targets)
    return [w / s for w, s in zip(weights, scale, strict=True)]


def _solve(matrix: list[list[float]], vector: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting (the systems here are 1x1 to 4x4)."""
    n = len(vector)
    a = [row[:] + [vector[i]] for i, row in enumerate(matrix)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        a[col], a[pivot] = a[pivot], a[col]
        if abs(a[col][col]) < 1e-12:
            continue
        for r in range(n):
            if r != col:
                factor = a[r][col] / a[col][col]
                a[r] = [x - factor * y for x, y in zip(a[r], a[col], strict=True)]
    return [a[i][n] / a[i][i] if abs(a[i][i]) > 1e-12 else 0.0 for i in range(n)]
