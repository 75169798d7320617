"""One-run privacy audit: canaries in training, membership guesses from the sample, an empirical epsilon lower bound."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from scipy import stats

from ehrbench.data import EHRData

from .checks import checked_synth
from .neighbors import encode, knn

BETA = 0.05  # the bound holds with probability 1 - BETA (over the canaries' coin flips), all attacks and guess counts together
DRAWS = 16  # random draws (noise levels, latents) averaged per canary by the loss attack


def make_canaries(data: EHRData, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """m canary records and the coin flip of each (True: put into training). A canary is far from every patient and
    from the other canaries: its binary columns (labels included) a random set as large as the mean record's, each
    continuous column drawn uniformly over its train range."""
    if m < 2:
        raise ValueError(f"canaries must be at least 2 (each goes into training with probability 1/2), got {m}")
    rng = np.random.default_rng([seed, 0xCA4A])
    T, b = data.train, data.binary_mask
    width = max(1, round(float(T[:, b].sum(1).mean()))) if b.any() else 0
    C = np.empty((m, T.shape[1]), dtype=np.float32)
    lo, hi = T[:, ~b].min(0), T[:, ~b].max(0)
    C[:, ~b] = lo + (hi - lo) * rng.random((m, int((~b).sum())))
    codes = np.argsort(rng.random((m, int(b.sum()))), axis=1)[:, :width]  # width distinct binary columns per canary
    on = np.zeros((m, int(b.sum())), dtype=np.float32)
    np.put_along_axis(on, codes, 1.0, axis=1)
    C[:, b] = on
    return C, rng.random(m) < 0.5


def with_canaries(data: EHRData, C: np.ndarray, included: np.ndarray) -> EHRData:
    """The data a generator trains on: train plus the included canaries (holdout and test unchanged)."""
    return replace(data, train=np.concatenate([data.train, C[included]]))


def audit_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P-value of v correct guesses out of r (m canaries) if the run were (epsilon, delta)-DP (Steinke, Nasr &
    Jagielski 2023, Theorem 3.2): P[Binomial(r, q) >= v] + 2 m delta max_i P[v - i <= Binomial(r, q) < v] / i with
    q = e^eps / (1 + e^eps), the accuracy of epsilon-DP randomised response."""
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(stats.binom.sf(v - 1, r, q))
    if delta == 0 or v == 0:
        return min(1.0, tail)
    below = np.cumsum(stats.binom.pmf(np.arange(v - 1, -1, -1), r, q))  # i = 1..v: P[v - i <= Bin < v]
    return min(1.0, tail + 2 * m * delta * float(np.max(below / np.arange(1, v + 1))))


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, beta: float = BETA) -> float:
    """The largest epsilon that v correct guesses of r reject at level beta (0 when none is rejected): bisection,
    since the p-value grows with epsilon."""
    if audit_p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    lo, hi = 0.0, 1.0
    while audit_p_value(m, r, v, hi, delta) < beta:
        lo, hi = hi, 2 * hi
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if audit_p_value(m, r, v, mid, delta) < beta else (lo, mid)
    return lo


def distance_scores(data: EHRData, C: np.ndarray, synth: np.ndarray) -> np.ndarray:
    """Black-box: minus each canary's distance to its nearest synthetic record (the metrics' Hamming / z-scored L2)."""
    Q, Se = encode(data, C, checked_synth(data, synth, min_rows=1))
    return -knn(Q, Se, 1, device="cpu")[0][:, 0].astype(np.float64)


def loss_scores(data: EHRData, C: np.ndarray, generator: Any, seed: int, draws: int = DRAWS) -> np.ndarray:
    """White-box (a torch generator): minus each canary's training loss (the loss keys that read records: the
    model's `private_keys` where it declares them, else all; each averaged over `draws` random draws), less the part
    a canary's rarity explains: the loss is regressed on the canary's likelihood under independent train marginals
    (over all canaries, no membership used), and the residual is the score, so a canary of rare codes is not taken
    for an excluded one."""
    X = torch.as_tensor(generator.model_rows(C), device=generator.device_)
    keys = [k for k in generator.optimizers_ if getattr(generator, "private_keys", None) is None
            or k in generator.private_keys]
    loss = np.zeros(len(C))
    with torch.random.fork_rng(devices=[]):  # gradients stay on: a critic's gradient penalty differentiates inside
        torch.manual_seed(seed)
        for i in range(len(C)):  # one small batch per canary: each loss reduces over its rows
            loss[i] = sum(float(generator.loss(X[i].expand(draws, -1), k).detach()) for k in keys)
    b = data.binary_mask
    p = np.clip(data.train[:, b].mean(0, dtype=np.float64), 1e-4, 1 - 1e-4)
    nll = -(C[:, b] * np.log(p) + (1 - C[:, b]) * np.log1p(-p)).sum(1)
    A = np.c_[np.ones(len(C)), nll]
    return -(loss - A @ np.linalg.lstsq(A, loss, rcond=None)[0])


def guess_bound(scores: np.ndarray, included: np.ndarray, delta: float, beta: float = BETA) -> dict:
    """The canaries with the k highest scores are guessed "in" (the rest abstain), for k in 1, 2, 4, ... up to m / 2;
    each k's bound is taken at level beta / (number of k) (Bonferroni) and the largest is kept: value = the empirical
    epsilon lower bound, with the guesses and correct guesses behind it."""
    m = len(scores)
    order = np.argsort(-scores, kind="stable")
    ks = [2 ** i for i in range(int(math.log2(max(1, m // 2))) + 1)]
    best = {"value": 0.0, "guesses": 0, "correct": 0}
    for k in ks:
        v = int(included[order[:k]].sum())
        eps = epsilon_lower_bound(m, k, v, delta, beta / len(ks))
        if eps > best["value"] or best["guesses"] == 0:
            best = {"value": eps, "guesses": k, "correct": v}
    return best


def audit(data: EHRData, C: np.ndarray, included: np.ndarray, generator: Any, synth: np.ndarray, *, delta: float,
          seed: int = 0, beta: float = BETA) -> dict:
    """The audit's result row: the black-box distance attack, and for a torch generator also the white-box loss
    attack, each at level beta / (number of attacks); value = the larger empirical epsilon lower bound."""
    attacks = {"distance": lambda: distance_scores(data, C, synth)}
    if hasattr(generator, "loss") and hasattr(generator, "optimizers_"):
        attacks["loss"] = lambda: loss_scores(data, C, generator, seed)
    best: dict = {"value": -1.0}
    for name, scores in attacks.items():
        found = guess_bound(scores(), included, delta, beta / len(attacks))
        if found["value"] > best["value"]:
            best = {**found, "attack": name}
    return {"metric": "canary_epsilon", "family": "privacy", "goal": "info", "ideal": None, "metric_version": 1,
            "status": "ok", **best, "attacks": list(attacks), "canaries": len(C), "included": int(included.sum()),
            "delta": delta, "beta": beta}
