"""Built-in EHR simulator: latent comorbidities switch on correlated, long-tailed diagnosis codes (no download)."""
from __future__ import annotations

import numpy as np

from .base import EHRData, from_matrix, register_dataset

AGE_BANDS = ("AGE_18_44", "AGE_45_64", "AGE_65_PLUS")


def simulate(n_patients: int = 20000, n_codes: int = 1000, seed: int = 0) -> tuple[np.ndarray, list[str], dict]:
    """Draw a binary patient x feature matrix from a noisy-OR comorbidity model.

    Generative story (all vectorised, deterministic for `seed`):
    - demographics: age band (18-44, 45-64, 65+ with probabilities .30/.35/.35) and sex;
    - K = min(50, n_codes // 4) latent conditions (codes per patient barely depend on n_codes); condition k has a base log-odds giving a prevalence
      log-uniform in [0.3%, 15%], shifted by +0.6 log-odds per age band and, for ~15% of conditions, a
      sex effect of +-1.5 (sex-specific conditions);
    - each condition emits a group of 3-20 codes, drawn with Zipf(1.1) weights so that common codes take
      part in many conditions, with emission probabilities ~ Beta(2, 3), except one defining code per
      condition (its diagnosis proper) recorded with probability ~ Beta(8, 2);
    - every code also has a Zipf-shaped background leak probability (mean ~1.2 codes per patient);
    - a code is present with probability 1 - (1 - leak) * prod_k (1 - z_k q_kj) (noisy OR), so codes of the
      same condition are correlated and the prevalence is long tailed;
    - in-hospital mortality (the label) is logistic in the conditions (a few severe ones weigh heavily)
      and age, ~10% positive.
    """
    if n_patients < 10 or n_codes < 10:
        raise ValueError(f"synthetic data needs n_patients >= 10 and n_codes >= 10, got {n_patients} and {n_codes}")
    rng = np.random.default_rng(seed)
    K = min(50, max(4, n_codes // 4))
    ranks = np.arange(1, n_codes + 1, dtype=float)
    zipf = ranks ** -1.1
    zipf /= zipf.sum()
    member_w = zipf ** 0.5 / (zipf ** 0.5).sum()  # flatter than the leak, so no code is in every condition
    code_order = rng.permutation(n_codes)  # column position of the rank-r code

    # Conditions: prevalence, age/sex effects, code groups and emission probabilities.
    prevalence = np.exp(rng.uniform(np.log(0.002), np.log(0.10), K))
    base_logit = np.log(prevalence / (1 - prevalence)) - 0.6  # -0.6 centres the age effect (mean band ~1)
    sex_effect = np.where(rng.random(K) < 0.15, rng.choice([-1.5, 1.5], K), 0.0)
    Q = np.zeros((K, n_codes))
    for k in range(K):  # K is ~50: a loop over conditions, not over patients or codes
        size = int(rng.integers(3, min(20, n_codes // 2) + 1))
        members = rng.choice(n_codes, size=size, replace=False, p=member_w)
        Q[k, code_order[members]] = rng.beta(2.0, 3.0, size)
        Q[k, code_order[members[rng.integers(size)]]] = rng.beta(8.0, 2.0)  # the condition's defining code
    leak = np.zeros(n_codes)
    leak[code_order] = np.minimum(zipf * 1.2, 0.2)

    # Patients.
    age = rng.choice(3, size=n_patients, p=[0.30, 0.35, 0.35])
    female = rng.random(n_patients) < 0.52
    logits = base_logit[None, :] + 0.6 * age[:, None] + sex_effect[None, :] * np.where(female, 1.0, -1.0)[:, None]
    Z = rng.random((n_patients, K)) < 1 / (1 + np.exp(-logits))
    log_absent = np.log1p(-leak)[None, :] + Z.astype(np.float64) @ np.log1p(-Q)
    codes = rng.random((n_patients, n_codes)) < -np.expm1(log_absent)

    severity = np.where(rng.random(K) < 0.2, rng.uniform(1.0, 2.5, K), rng.uniform(-0.2, 0.5, K))
    mort_logit = -3.9 + Z.astype(np.float64) @ severity + 0.5 * age
    mortality = rng.random(n_patients) < 1 / (1 + np.exp(-mort_logit))

    demo = np.zeros((n_patients, 4), dtype=np.float32)
    demo[np.arange(n_patients), age] = 1
    demo[:, 3] = female
    width = len(str(n_codes))
    columns = [f"D_{j:0{width}d}" for j in range(n_codes)] + list(AGE_BANDS) + ["SEX_F", "MORTALITY"]
    X = np.concatenate([codes.astype(np.float32), demo, mortality[:, None].astype(np.float32)], axis=1)
    meta = {
        "source": "built-in simulator (data/synthetic.py)",
        "licence": "generated; no restrictions",
        "simulator": {"n_patients": n_patients, "n_codes": n_codes, "seed": seed, "n_conditions": K},
        "codes_per_patient_mean": float(codes.sum(1).mean()),
        "mortality_rate": float(mortality.mean()),
    }
    return X, columns, meta


@register_dataset("synthetic")
def load_synthetic(n_patients: int = 20000, n_codes: int = 1000, seed: int = 0,
                   split: tuple[float, float, float] = (0.8, 0.1, 0.1), split_seed: int = 0) -> EHRData:
    """The built-in simulator as an EHRData: n_codes diagnosis codes, 3 age bands, sex and the MORTALITY label."""
    X, columns, meta = simulate(n_patients, n_codes, seed)
    return from_matrix(X, columns, ["binary"] * len(columns), name="synthetic", label_columns=["MORTALITY"],
                       meta=meta, split=split, split_seed=split_seed)
