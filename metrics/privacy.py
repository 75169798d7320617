"""Privacy risk: membership and attribute inference, distance to closest record, NNAA and exact copies (train = members)."""
from __future__ import annotations

import numpy as np

from data import EHRData

from .checks import checked_synth, code_mask, subsample
from .learners import auroc
from .neighbors import encode, is_hamming, knn, to_distance
from .registry import register_metric


def _members(data: EHRData, rng: np.random.Generator, n: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Equal seeded samples of members (train) and non-members (holdout): min(n, |holdout|, |train|) each."""
    if len(data.holdout) == 0:
        raise ValueError(f"the dataset {data.name} has an empty holdout split, so there are no non-members to compare")
    m = min(len(data.holdout), len(data.train), n if n is not None else len(data.holdout))
    return subsample(rng, data.train, m), subsample(rng, data.holdout, m)


# Distance-to-closest-synthetic-record membership attack: Hayes et al. 2019 (LOGAN) / Chen et al. 2020
# (GAN-Leaks, "full black-box" attack); the MIR of medGAN-lineage EHR papers (Hamming for binary records).
@register_metric("mia_auc", goal="min", family="privacy")
def mia_auc(data: EHRData, synth: np.ndarray, *, seed: int = 0, n: int | None = 5000, device: str = "auto") -> dict:
    """Membership-inference advantage of the distance-to-closest-synthetic-record attack.

    Score s(x) = -min_j d(x, y_j) (Hamming on binary data, L2 on 0/1 codes + z-scored continuous columns);
    AUC of s over equal numbers m = min(n, |holdout|) of members (train) and non-members (holdout), ties
    counted one half. value = advantage = 2 |AUC - 0.5|; range [0, 1], lower is better (0 = the attacker
    cannot tell members). Info: auc (the raw attack AUC; 0.5 ideal).
    """
    S = checked_synth(data, synth, min_rows=1)
    mem, non = _members(data, np.random.default_rng(seed), n)
    Q, Se = encode(data, np.concatenate([mem, non]), S)
    d = knn(Q, Se, 1, device=device)[0][:, 0]
    auc = auroc(np.r_[np.ones(len(mem)), np.zeros(len(non))], -d)
    return {"value": 2 * abs(auc - 0.5), "auc": auc}


# Attribute inference with k-NN on known codes: Yan et al. 2022 ("A multifaceted benchmarking of synthetic
# electronic health record generation models", AIR), synthEHRella (k = 1); risk = members' F1 minus the
# non-members' F1, so what any model of the population would reveal is not counted as leakage.
@register_metric("attribute_inference_f1", goal="min", family="privacy")
def attribute_inference_f1(data: EHRData, synth: np.ndarray, *, seed: int = 0, known: int = 256, k: int = 1,
                           n: int | None = 2000, device: str = "auto") -> dict:
    """Attribute-inference risk: F1(members) - F1(non-members) of a k-NN attack on the synthetic records.

    The attacker knows each real record's values on the K = min(known, n_codes // 2) most prevalent codes
    (real train prevalence), finds the k nearest synthetic records on those codes (Hamming; ties broken by a
    seeded random order of the synthetic records) and predicts each remaining code as 1 when more than half of
    the k neighbours have it. F1 = 2TP / (2TP + FP + FN) pooled over all (record, unknown code) cells (0 when
    there are no positives at all). value = F1_members - F1_nonmembers, range [-1, 1], lower is better
    (0 = no member advantage). Info: f1_members, f1_nonmembers.
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
    f1 = {}
    for name, R in (("members", mem), ("nonmembers", non)):
        idx = knn(R[:, kn], S_known, k, return_index=True, hamming=True, device=device)[1]
        pred = 2 * S_unknown[idx].sum(1) > k  # majority of the k neighbours, per (record, unknown code)
        true = R[:, unk] > 0.5
        tp = np.count_nonzero(pred & true)
        denom = np.count_nonzero(pred) + np.count_nonzero(true)
        f1[name] = 2 * tp / denom if denom else 0.0
    return {"value": float(f1["members"] - f1["nonmembers"]), "f1_members": float(f1["members"]),
            "f1_nonmembers": float(f1["nonmembers"])}


# Platzer & Reutterer 2021, "Holdout-based fidelity and privacy assessment of mixed-type synthetic data" (the DCR
# share; SDMetrics' DCROverfittingProtection is 1 minus a rescaled version of it).
@register_metric("dcr", goal="min", family="privacy")
def dcr(data: EHRData, synth: np.ndarray, *, seed: int = 0, n: int | None = 10000, device: str = "auto") -> dict:
    """Share of synthetic records closer to the training set than to an equally large holdout set.

    For a seeded subsample of at most n synthetic records y: d_tr(y) = distance to the closest of m = |holdout|
    training records (subsampled to the holdout size), d_ho(y) = to the closest holdout record;
    value = mean(1[d_tr < d_ho] + 0.5 1[d_tr = d_ho]). Range [0, 1]; 0.5 is ideal (synthetic records are no
    closer to members than to unseen patients), higher = closer to the training data; ranked lower is better.
    Info: median_train and median_holdout, the median DCRs (Hamming on binary data, L2 otherwise).
    """
    S = checked_synth(data, synth, min_rows=1)
    rng = np.random.default_rng(seed)
    mem, non = _members(data, rng, None)
    Y = subsample(rng, S, n)
    Ye, me, ne = encode(data, Y, mem, non)
    dtr = knn(Ye, me, 1, device=device)[0][:, 0]
    dho = knn(Ye, ne, 1, device=device)[0][:, 0]
    share = float(np.mean((dtr < dho) + 0.5 * (dtr == dho)))
    h = is_hamming(data)
    return {"value": share, "median_train": float(np.median(to_distance(dtr, h))),
            "median_holdout": float(np.median(to_distance(dho, h)))}


# Yale et al. 2020, "Generation and evaluation of privacy preserving synthetic health data" (Neurocomputing):
# nearest-neighbour adversarial accuracy AA_TS and privacy loss = AA_test - AA_train.
@register_metric("nnaa", goal="min", family="privacy")
def nnaa(data: EHRData, synth: np.ndarray, *, seed: int = 0, n: int | None = 5000, device: str = "auto") -> dict:
    """NNAA privacy loss (Yale et al. 2020): AA(holdout, S) - AA(train, S).

    AA(T, S) = 1/2 [ (1/m) sum_i 1(d_TS(i) > d_TT(i)) + (1/m) sum_i 1(d_ST(i) > d_SS(i)) ], with d_TS(i) the
    distance from real t_i to its nearest synthetic record, d_TT(i) to its nearest other real record (leave one
    out), d_ST / d_SS likewise for synthetic records; T, S and the holdout all hold m = min(n, |holdout|) rows.
    AA = 0.5 means real and synthetic are indistinguishable by nearest neighbours. value = privacy loss, range
    [-1, 1], lower is better (0 = the synthetic data sit no closer to members than to non-members; positive =
    leakage). Info: aa_train, aa_test.
    """
    S = checked_synth(data, synth, min_rows=2)
    rng = np.random.default_rng(seed)
    mem, non = _members(data, rng, n)
    if len(mem) < 2:
        raise ValueError(f"nnaa needs at least 2 holdout records, the dataset {data.name} has {len(non)}")
    Y = subsample(rng, S, len(mem))
    Ye, me, ne = encode(data, Y, mem, non)
    d_ss = knn(Ye, Ye, 1, exclude_self=True, device=device)[0][:, 0]

    def aa(T: np.ndarray) -> float:
        d_ts = knn(T, Ye, 1, device=device)[0][:, 0]
        d_tt = knn(T, T, 1, exclude_self=True, device=device)[0][:, 0]
        d_st = knn(Ye, T, 1, device=device)[0][:, 0]
        return 0.5 * (float(np.mean(d_ts > d_tt)) + float(np.mean(d_st > d_ss)))

    aa_train, aa_test = aa(me), aa(ne)
    return {"value": aa_test - aa_train, "aa_train": aa_train, "aa_test": aa_test}


def _row_words(data: EHRData, X: np.ndarray) -> np.ndarray:
    """Each row as uint64 words: binary columns bit-packed, continuous columns as float32 bit patterns."""
    b = data.binary_mask
    B = X if b.all() else X[:, b]
    packed = np.packbits(B > 0.5, axis=1)
    packed = np.ascontiguousarray(np.pad(packed, ((0, 0), (0, -packed.shape[1] % 8)))).view(np.uint64)
    if b.all():
        return packed
    cont = (X[:, ~b].astype(np.float32) + np.float32(0.0)).view(np.uint32).astype(np.uint64)  # -0.0 -> 0.0
    return np.concatenate([packed, cont], 1)


def _is_copy(queries: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Boolean per query row: identical to at least one ref row (uint64 word matrices of equal width).

    Rows are hashed with a fixed random odd multiplier per word (sum mod 2^64); each query is compared word by
    word with the ref row of equal hash, so a reported copy is always exact (a hash collision between distinct
    ref rows could only hide a copy, with probability ~2^-64).
    """
    mult = np.random.default_rng(12345).integers(1, 2**63, size=ref.shape[1], dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    hq, hr = (queries * mult).sum(1, dtype=np.uint64), (ref * mult).sum(1, dtype=np.uint64)
    order = np.argsort(hr, kind="stable")
    pos = np.minimum(np.searchsorted(hr[order], hq), len(hr) - 1)
    cand = order[pos]
    return (hr[cand] == hq) & (queries == ref[cand]).all(1)


# Exact copies ("identical match share", Platzer & Reutterer 2021; SDMetrics' NewRowSynthesis is 1 minus it).
@register_metric("exact_copy_rate", goal="min", family="privacy")
def exact_copy_rate(data: EHRData, synth: np.ndarray, *, seed: int = 0) -> dict:
    """Share of synthetic records identical (all columns) to at least one training record.

    Range [0, 1], lower is better. Info: holdout = the same share for real holdout records, the baseline that
    duplicated patients create (sparse code sets coincide often), which a generator of new patients would match.
    """
    S = checked_synth(data, synth, min_rows=1)
    tr = _row_words(data, data.train)
    ho = _is_copy(_row_words(data, data.holdout), tr).mean() if len(data.holdout) else float("nan")
    return {"value": float(_is_copy(_row_words(data, S), tr).mean()), "holdout": float(ho)}
