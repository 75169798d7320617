"""Privacy risk: membership and attribute inference, distance to closest record, NNAA and exact copies (train = members)."""
from __future__ import annotations

import math

import numpy as np
from scipy.special import gammaln

from ehrbench.data import EHRData

from .checks import checked_synth, code_mask, subsample
from .learners import auroc
from .neighbors import encode, is_hamming, knn, to_distance
from .registry import register_metric

BOOTSTRAP = 200  # resamples for the bootstrap standard errors of attribute_inference_f1


def _members(data: EHRData, rng: np.random.Generator, n: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Equal seeded samples of members (train) and non-members (holdout): min(n, |holdout|, |train|) each."""
    if len(data.holdout) == 0:
        raise ValueError(f"the dataset {data.name} has an empty holdout split, so there are no non-members to compare")
    m = min(len(data.holdout), len(data.train), n if n is not None else len(data.holdout))
    return subsample(rng, data.train, m), subsample(rng, data.holdout, m)


def mia_advantage_bound(epsilon: float, delta: float) -> float:
    """The largest 2 |AUC - 0.5| any membership test can reach against an (epsilon, delta)-DP release.

    DP confines every test's ROC curve to TPR(a) <= T(a) = min(1, e^eps a + delta, 1 - e^-eps (1 - delta - a))
    at FPR a (and, by symmetry, a reversed test to 1 - T(1 - a)), so AUC <= integral of T. T is the minimum of three
    lines: it is linear between their crossings, (1 - delta) / (e^eps + 1), (1 - delta) e^-eps and 1 - delta, and
    the trapezoid rule over those points is exact. With delta = 0 the integral is e^eps / (e^eps + 1), so the bound is
    tanh(eps / 2), the same as the largest TPR - FPR."""
    if not (epsilon >= 0 and 0 <= delta <= 1):
        raise ValueError(f"mia_advantage_bound needs epsilon >= 0 and delta in [0, 1], got {epsilon!r}, {delta!r}")
    if math.isinf(epsilon):
        return 1.0
    e = math.exp(epsilon)
    pts = np.unique(np.clip([0.0, (1 - delta) / (e + 1), (1 - delta) / e, 1 - delta, 1.0], 0.0, 1.0))
    T = np.minimum.reduce([np.ones_like(pts), e * pts + delta, 1 - (1 - delta - pts) / e])
    auc = float(np.sum(np.diff(pts) * (T[1:] + T[:-1]) / 2))
    return min(1.0, max(0.0, 2 * auc - 1))


def auc_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an AUC from n_pos positives and n_neg negatives (Hanley & McNeil 1982, eq. 2)."""
    q1, q2 = auc / (2 - auc), 2 * auc ** 2 / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc ** 2) + (n_neg - 1) * (q2 - auc ** 2)) / (n_pos * n_neg)
    return float(math.sqrt(max(var, 0.0)))


# Distance-to-closest-synthetic-record membership attack: Hayes et al. 2019 (LOGAN) / Chen et al. 2020
# (GAN-Leaks, "full black-box" attack); the MIR of medGAN-lineage EHR papers (Hamming for binary records).
# The signed advantage with ideal 0 and a standard error: an attack doing worse than chance is not leakage.
@register_metric("mia_auc", goal="min", ideal=0.0, family="privacy", version=2, concept="membership")
def mia_auc(data: EHRData, synth: np.ndarray, *, seed: int = 0, n: int | None = 5000, device: str = "auto") -> dict:
    """Membership-inference advantage of the distance-to-closest-synthetic-record attack.

    Score s(x) = -min_j d(x, y_j) (Hamming on binary data, L2 on 0/1 codes + z-scored continuous columns);
    AUC of s over equal numbers m = min(n, |holdout|) of members (train) and non-members (holdout), ties
    counted one half. value = advantage = 2 (AUC - 0.5), range [-1, 1], ideal 0 (the attacker cannot tell
    members); a negative value (synthetic records nearer to non-members: chance) is no better than 0, so reports
    rank max(0, value) within noise; se = 2 x the Hanley-McNeil standard error of the AUC. Info: auc, se.
    """
    S = checked_synth(data, synth, min_rows=1)
    mem, non = _members(data, np.random.default_rng(seed), n)
    Q, Se = encode(data, np.concatenate([mem, non]), S)
    d = knn(Q, Se, 1, device=device)[0][:, 0]
    auc = auroc(np.r_[np.ones(len(mem)), np.zeros(len(non))], -d)
    return {"value": 2 * (auc - 0.5), "auc": auc, "se": 2 * auc_se(auc, len(mem), len(non))}


# Attribute inference with k-NN on known codes: Yan et al. 2022 ("A multifaceted benchmarking of synthetic
# electronic health record generation models", AIR), synthEHRella (k = 1); risk = members' F1 minus the
# non-members' F1, so what any model of the population would reveal is not counted as leakage.
# Ideal 0: ranked by the excess over 0, clipped at 0, within noise (below the ideal is not better).
@register_metric("attribute_inference_f1", goal="min", ideal=0.0, family="privacy", version=2, reads="binary")
def attribute_inference_f1(data: EHRData, synth: np.ndarray, *, seed: int = 0, known: int = 256, k: int = 1,
                           n: int | None = 2000, device: str = "auto") -> dict:
    """Attribute-inference risk: F1(members) - F1(non-members) of a k-NN attack on the synthetic records.

    The attacker knows each real record's values on the K = min(known, n_codes // 2) most prevalent codes
    (real train prevalence), finds the k nearest synthetic records on those codes (Hamming; ties broken by a
    seeded random order of the synthetic records) and predicts each remaining code as 1 when more than half of
    the k neighbours have it. F1 = 2TP / (2TP + FP + FN) pooled over all (record, unknown code) cells (0 when
    there are no positives at all). value = F1_members - F1_nonmembers, range [-1, 1], ideal 0 (no member
    advantage); a negative value (chance) is no better than 0, so reports rank max(0, value) within noise, clipping at
    the ideal. Info: f1_members, f1_nonmembers and se, the
    bootstrap standard error of the value (200 seeded resamples of the members and of the non-members).
    """
    S = checked_synth(data, synth, min_rows=k)
    codes = np.flatnonzero(code_mask(data, "attribute inference"))
    if len(codes) < 2:
        raise ValueError(f"the dataset {data.name} has {len(codes)} code column, attribute inference needs at least 2")
    rng = np.random.default_rng(seed)
    mem, non = _members(data, rng, n)
    K = max(1, min(known, len(codes) // 2))
    order = np.argsort(-data.train[:, codes].mean(0), kind="stable")
    kn, unk = codes[order[:K]], codes[order[K:]]
    perm = rng.permutation(len(S))  # seeded random order = random tie-breaking among equally close records
    S_known, S_unknown = S[:, kn][perm], (S[:, unk] > 0.5)[perm].astype(np.uint8)
    f1, boot = {}, {}
    for name, R in (("members", mem), ("nonmembers", non)):
        idx = knn(R[:, kn], S_known, k, return_index=True, hamming=True, device=device)[1]
        pred = 2 * S_unknown[idx].sum(1) > k  # majority of the k neighbours, per (record, unknown code)
        true = R[:, unk] > 0.5
        tp = np.count_nonzero(pred & true, axis=1).astype(np.float64)  # per record
        denom = (np.count_nonzero(pred, axis=1) + np.count_nonzero(true, axis=1)).astype(np.float64)
        f1[name] = 2 * tp.sum() / denom.sum() if denom.sum() else 0.0
        W = rng.multinomial(len(R), np.full(len(R), 1.0 / len(R)), size=BOOTSTRAP)  # resampled record counts
        with np.errstate(invalid="ignore", divide="ignore"):
            boot[name] = np.nan_to_num(2 * (W @ tp) / (W @ denom))
    se = float(np.std(boot["members"] - boot["nonmembers"], ddof=1))
    return {"value": float(f1["members"] - f1["nonmembers"]), "f1_members": float(f1["members"]),
            "f1_nonmembers": float(f1["nonmembers"]), "se": se}


def _closer_to_train(Q: np.ndarray, train: np.ndarray, holdout: np.ndarray, device: str) -> tuple[np.ndarray, ...]:
    """Per query row: 1 if closer to train than to holdout, 0.5 on a tie, else 0; and both squared distances."""
    dtr = knn(Q, train, 1, device=device)[0][:, 0]
    dho = knn(Q, holdout, 1, device=device)[0][:, 0]
    return (dtr < dho) + 0.5 * (dtr == dho), dtr, dho


# Platzer & Reutterer 2021, "Holdout-based fidelity and privacy assessment of mixed-type synthetic data" (the DCR
# share); its relative is SDMetrics' DCROverfittingProtection, which compares the share with the 0.5 expected for
# an equal-size holdout. Here: the whole training set, and the expected share measured on real test records
# (patients that neither train nor holdout contains) instead of assumed.
@register_metric("dcr", goal="min", ideal=0.0, family="privacy", version=2, splits=("train", "holdout", "test"), concept="membership")
def dcr(data: EHRData, synth: np.ndarray, *, seed: int = 0, n: int | None = 10000, device: str = "auto") -> dict:
    """DCR excess: how much more often synthetic records sit closer to the training set than fresh patients do.

    For a record x: c(x) = 1 if its closest training record (all of train) is closer than its closest holdout
    record, 0.5 on a tie, else 0 (Hamming on binary data, L2 on 0/1 codes + z-scored continuous columns).
    share = mean c(y) over a seeded subsample of at most n synthetic records; null = mean c(t) over at most n
    real *test* records, which were never trained on, so null is the share a generator that never saw the
    training data is expected to reach at this train:holdout size ratio (about |train| / (|train| + |holdout|),
    measured rather than assumed). value = (share - null) / (1 - null): 0 = as close to the training data as
    new patients (ideal), 1 = every synthetic record is closer to a training record than to any holdout record
    (a copy of train), negative = farther from train than new patients (no leakage; noise or poor fidelity).
    Lower is better down to the ideal 0: reports rank max(0, value) within noise, clipping at the ideal (se by the
    delta method from the two binomial shares), since a negative value reveals no more than 0. Info: share, null, se, median_train and median_holdout (median DCRs of the synthetic rows).
    """
    S = checked_synth(data, synth, min_rows=1)
    if len(data.holdout) == 0 or len(data.test) == 0:
        raise ValueError(f"the dataset {data.name} needs non-empty holdout and test splits for dcr (the holdout is "
                         "the comparison set, the test split the null)")
    rng = np.random.default_rng(seed)
    Y, T = subsample(rng, S, n), subsample(rng, data.test, n)
    Ye, Te, tr, ho = encode(data, Y, T, data.train, data.holdout)
    c_syn, dtr, dho = _closer_to_train(Ye, tr, ho, device)
    c_null = _closer_to_train(Te, tr, ho, device)[0]
    share, null = float(c_syn.mean()), float(c_null.mean())
    if null >= 1.0:
        raise ValueError(f"every real test record of {data.name} is closer to train than to the holdout, so the DCR "
                         "excess is undefined (holdout too small)")
    value = (share - null) / (1.0 - null)
    var_s, var_0 = c_syn.var() / len(c_syn), c_null.var() / len(c_null)
    se = float(np.sqrt(var_s / (1 - null) ** 2 + var_0 * (1 - share) ** 2 / (1 - null) ** 4))
    h = is_hamming(data)
    return {"value": value, "share": share, "null": null, "se": se,
            "median_train": float(np.median(to_distance(dtr, h))), "median_holdout": float(np.median(to_distance(dho, h)))}


# Yale et al. 2020, "Generation and evaluation of privacy preserving synthetic health data" (Neurocomputing):
# nearest-neighbour adversarial accuracy AA_TS and privacy loss = AA_test - AA_train.
# Version 2: ideal 0 (ranked by the excess over 0 beyond two standard errors, clipped at 0); value unchanged; "se".
@register_metric("nnaa", goal="min", ideal=0.0, family="privacy", version=2, concept="membership")
def nnaa(data: EHRData, synth: np.ndarray, *, seed: int = 0, n: int | None = 5000, device: str = "auto") -> dict:
    """NNAA privacy loss (Yale et al. 2020): AA(holdout, S) - AA(train, S).

    AA(T, S) = 1/2 [ (1/m) sum_i 1(d_TS(i) > d_TT(i)) + (1/m) sum_i 1(d_ST(i) > d_SS(i)) ], with d_TS(i) the
    distance from real t_i to its nearest synthetic record, d_TT(i) to its nearest other real record (leave one
    out), d_ST / d_SS likewise for synthetic records; T, S and the holdout all hold m = min(n, |holdout|) rows.
    AA = 0.5 means real and synthetic are indistinguishable by nearest neighbours. value = privacy loss, range
    [-1, 1], ideal 0 (the synthetic data sit no closer to members than to non-members; positive = leakage,
    negative = chance, no better than 0). Reports rank max(0, value) within noise, clipping at the ideal, with se the
    binomial standard error of the difference (the four indicator means treated as independent). Info: aa_train,
    aa_test, se.
    """
    S = checked_synth(data, synth, min_rows=2)
    rng = np.random.default_rng(seed)
    mem, non = _members(data, rng, n)
    if len(mem) < 2:
        raise ValueError(f"nnaa needs at least 2 holdout records, the dataset {data.name} has {len(non)}")
    Y = subsample(rng, S, len(mem))
    Ye, me, ne = encode(data, Y, mem, non)
    d_ss = knn(Ye, Ye, 1, exclude_self=True, device=device)[0][:, 0]

    def aa(T: np.ndarray) -> tuple[float, float]:
        d_ts = knn(T, Ye, 1, device=device)[0][:, 0]
        d_tt = knn(T, T, 1, exclude_self=True, device=device)[0][:, 0]
        d_st = knn(Ye, T, 1, device=device)[0][:, 0]
        a, b = float(np.mean(d_ts > d_tt)), float(np.mean(d_st > d_ss))
        return 0.5 * (a + b), 0.25 * (a * (1 - a) / len(d_ts) + b * (1 - b) / len(d_st))

    (aa_train, v_train), (aa_test, v_test) = aa(me), aa(ne)
    return {"value": aa_test - aa_train, "aa_train": aa_train, "aa_test": aa_test,
            "se": float(np.sqrt(v_train + v_test))}


def _row_bytes(data: EHRData, X: np.ndarray) -> np.ndarray:
    """Each row as one opaque byte string: binary columns bit-packed, continuous columns as float32 bytes."""
    b = data.binary_mask
    parts = [np.packbits(X[:, b] > 0.5, axis=1)]
    if not b.all():
        parts.append(np.ascontiguousarray(X[:, ~b].astype(np.float32) + np.float32(0.0)).view(np.uint8))  # -0.0 -> 0.0
    R = np.ascontiguousarray(np.concatenate(parts, 1))
    return R.view(np.dtype((np.void, R.shape[1]))).ravel()


def _is_copy(queries: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Boolean per query row: byte-for-byte identical to at least one ref row (np.void rows of equal width).

    Exact: np.isin sorts the whole rows (memcmp order), so equality is decided on every byte, never by a hash.
    """
    return np.isin(queries, ref)


def _counts(queries: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """How many ref rows equal each query row (np.void rows of equal width; exact, by sorting)."""
    u, c = np.unique(ref, return_counts=True)
    if not len(u):
        return np.zeros(len(queries), dtype=np.int64)
    i = np.minimum(np.searchsorted(u, queries), len(u) - 1)
    return np.where(u[i] == queries, c[i], 0)


def _held(c: np.ndarray, n: int, s: int) -> np.ndarray:
    """P(a random s-subset of n records holds at least one of c equal ones) = 1 - C(n - c, s) / C(n, s)."""
    c = np.asarray(c, dtype=np.float64)
    free = np.maximum(n - c - s + 1, 1.0)  # C(n - c, s) = 0 where n - c < s
    miss = np.exp(gammaln(n - c + 1) - gammaln(free) - gammaln(n + 1) + gammaln(n - s + 1))
    return np.where(n - c < s, 1.0, 1.0 - miss)


# Exact copies ("identical match share", Platzer & Reutterer 2021; SDMetrics' NewRowSynthesis is 1 minus it).
# Whole-row comparison of the synthetic records with equally many members and non-members: a random subset of the
# members is exchangeable with the non-members, so output made without members scores 0 in expectation, however
# short or common its records.
@register_metric("exact_copy_rate", goal="min", ideal=0.0, family="privacy", version=4,
                 splits=("train", "holdout", "test"))
def exact_copy_rate(data: EHRData, synth: np.ndarray, *, seed: int = 0, n_null: int = 400) -> dict:
    """Exact-copy excess: the share of synthetic records equal (all columns) to a record of a random sample of
    the members (train) as large as the non-members (holdout and test), minus the share equal to a non-member;
    in closed form, the mean over synthetic records of P(the sample holds one of its c member copies) - P(...of
    its k non-member copies), each 1 - C(N - c, s) / C(N, s) with s = min(n_train, n_nonmembers).

    value in [-1, 1], ideal 0; a copy of a record unique to the members adds s / n_train. se: the spread of the
    value over `n_null` random re-splits of each synthetic record's pooled count c + k into members and
    non-members (hypergeometric), the noise of which patients happened to be members. Info: rate (the share
    equal to some member), baseline (to some non-member), se.
    """
    S = checked_synth(data, synth, min_rows=1)
    non = np.concatenate([data.holdout, data.test])
    tr, nm = _row_bytes(data, data.train), _row_bytes(data, non)
    n, m = len(tr), len(nm)
    s = min(n, m)
    rows, inv = np.unique(_row_bytes(data, S), return_inverse=True)
    inv = inv.ravel()
    w = np.bincount(inv, minlength=len(rows)) / len(S)
    c, k = _counts(rows, tr), _counts(rows, nm)
    value = float(w @ (_held(c, n, s) - _held(k, m, s)))
    pooled = (c + k) > 0
    K, wp = (c + k)[pooled], w[pooled]
    held_n, held_m = _held(np.arange(K.max(initial=0) + 1), n, s), _held(np.arange(K.max(initial=0) + 1), m, s)
    rng = np.random.default_rng(seed)
    null = np.concatenate([(held_n[d] - held_m[K - d]) @ wp  # re-splits in blocks of 50: bounded memory
                           for d in (rng.hypergeometric(K, n + m - K, n, size=(min(50, n_null - i), len(K)))
                                     for i in range(0, n_null, 50))])
    return {"value": value, "rate": float((c > 0)[inv].mean()), "baseline": float((k > 0)[inv].mean()),
            "se": float(null.std()) if len(K) else 0.0}
