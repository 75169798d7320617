"""zcdp: zero-concentrated DP accounting for MST (Bun & Steinke 2016; the conversion of Canonne, Kamath & Steinke 2020)."""
from __future__ import annotations

import math


def cdp_delta(rho: float, eps: float) -> float:
    """delta such that rho-zCDP implies (eps, delta)-DP: the bound of Canonne, Kamath & Steinke ("The Discrete Gaussian
    for Differential Privacy", NeurIPS 2020) that private-pgm's mechanisms/cdp2adp.py uses,
    delta = inf over alpha > 1 of exp((alpha - 1)(alpha rho - eps)) / alpha * (1 - 1/alpha)^(alpha - 1),
    minimised here over alpha in [1.01, (eps + 1) / (2 rho) + 2] (log delta is convex in alpha; the optimum is at least
    (1 + eps / rho) / 2, and alpha >= 1.01 keeps the logarithms stable, as in cdp2adp.py)."""
    if rho < 0 or eps < 0:
        raise ValueError(f"cdp_delta needs rho >= 0 and eps >= 0, got rho={rho}, eps={eps}")
    if rho == 0:
        return 0.0
    from scipy.optimize import minimize_scalar

    def log_delta(alpha: float) -> float:
        return (alpha - 1) * (alpha * rho - eps) + (alpha - 1) * math.log1p(-1 / alpha) - math.log(alpha)

    hi = (eps + 1) / (2 * rho) + 2
    best = minimize_scalar(log_delta, bounds=(1.01, hi), method="bounded", options={"xatol": 1e-10 * hi})
    value = min(log_delta(1.01), log_delta(hi), float(best.fun))
    return min(1.0, math.exp(value))


def cdp_rho(eps: float, delta: float) -> float:
    """The largest rho whose rho-zCDP implies (eps, delta)-DP (bisection on cdp_delta, which grows with rho)."""
    if not (eps > 0 and 0 < delta < 1):
        raise ValueError(f"cdp_rho needs eps > 0 and delta in (0, 1), got eps={eps}, delta={delta}")
    lo, _ = _bisect(lambda rho: cdp_delta(rho, eps) <= delta, 0.0, eps + 1.0)  # holds at 0, fails at eps + 1
    return lo * (1 - 1e-12)  # a hair below the bound, so that rounding never reports an epsilon above the target


def cdp_eps(rho: float, delta: float) -> float:
    """The smallest eps such that rho-zCDP implies (eps, delta)-DP (the epsilon a run reports as spent)."""
    if rho <= 0:
        return 0.0
    # the standard bound rho + 2 sqrt(rho log(1/delta)) satisfies cdp_delta <= delta; 0 does not
    _, hi = _bisect(lambda eps: cdp_delta(rho, eps) > delta, 0.0, rho + 2 * math.sqrt(rho * math.log(1 / delta)))
    return hi


def _bisect(holds, lo: float, hi: float) -> tuple[float, float]:
    """The bracket [lo, hi] around the point where a monotone `holds` turns from true (at lo) to false (at hi),
    narrowed to a relative width of 1e-15."""
    for _ in range(200):
        mid = (lo + hi) / 2
        if holds(mid):
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * hi:
            break
    return lo, hi


def budget_split(rho: float, d: int) -> tuple[float, float, float]:
    """MST's split of rho in thirds (mechanisms/mst.py): with sigma = sqrt(3 / (2 rho)), each of the d one-way marginals
    is measured with Gaussian noise of std sigma sqrt(d) (private-pgm's measure(): weights 1/sqrt(d) each, unit norm),
    each of the d - 1 tree rounds runs the exponential mechanism with epsilon sqrt(8 (rho / 3) / (d - 1)), and each of
    the d - 1 chosen two-way marginals gets std sigma sqrt(d - 1). Returns (std1, em_epsilon, std2)."""
    sigma = math.sqrt(3 / (2 * rho))
    if d < 2:
        return sigma * math.sqrt(d), 0.0, 0.0
    return sigma * math.sqrt(d), math.sqrt(8 * (rho / 3) / (d - 1)), sigma * math.sqrt(d - 1)


def zcdp_spent(std1: float, n1: int, em_epsilon: float, rounds: int, std2: float, n2: int) -> list[float]:
    """rho of each part: a marginal has L2 sensitivity 1 (one record is one cell, add/remove), so Gaussian noise of
    std s costs 1 / (2 s^2) (Bun & Steinke 2016); an exponential-mechanism round with epsilon e costs e^2 / 8
    (the bounded-range analysis MST uses; Cesar & Rogers 2021)."""
    return [n1 / (2 * std1 ** 2) if n1 else 0.0, rounds * em_epsilon ** 2 / 8,
            n2 / (2 * std2 ** 2) if n2 else 0.0]
