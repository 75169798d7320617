"""Output rules of the probability-output generators (VAE, medGAN, EMR-WGAN): docs/contracts.md §3's binarisation rule."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

BINARIZE_RULES = ("bernoulli", "threshold")


def check_binarize(rule: str, model: str) -> None:
    if rule not in BINARIZE_RULES:
        raise ValueError(f"{model}: unknown binarize rule '{rule}'; valid choices: {', '.join(BINARIZE_RULES)}")


def check_unit_interval(X: np.ndarray, kinds: Sequence[str], columns: Sequence[str], where: str) -> None:
    """A sigmoid/BCE model needs continuous columns in [0, 1] (the loaders min-max scale them); one-sentence error."""
    cont = np.asarray([k != "binary" for k in kinds])
    if not cont.any():
        return
    C = X[:, cont]
    bad = (C < 0) | (C > 1)
    if bad.any():
        i, jc = np.argwhere(bad)[0]
        j = int(np.flatnonzero(cont)[jc])
        raise ValueError(f"{where}: continuous value {X[i, j]} in row {i}, column {columns[j]!r} is outside [0, 1]; "
                         "this model has a sigmoid output, so scale continuous columns to [0, 1] (e.g. matrix scale=true)")


def binarize(out: torch.Tensor, binary_mask: np.ndarray, rule: str, generator: torch.Generator) -> np.ndarray:
    """Turn generator outputs into records: binary columns by `rule`, every other column left as it is.

    `bernoulli`: x ~ Bernoulli(clip(p, 0, 1)) with uniforms drawn from the seeded `generator` (docs/contracts.md §3: a
    0.5 threshold collapses rare codes); `threshold`: x = 1[p >= 0.5] (the CorGAN-repo and medGAN rule).
    """
    out = out.detach().to("cpu", torch.float32)
    b = torch.as_tensor(np.asarray(binary_mask, dtype=bool))
    if not bool(b.any()):
        return out.numpy()
    p = out[:, b].clamp(0.0, 1.0)
    if rule == "bernoulli":
        out[:, b] = (torch.rand(p.shape, generator=generator) < p).float()
    elif rule == "threshold":
        out[:, b] = (p >= 0.5).float()
    else:
        raise ValueError(f"unknown binarize rule '{rule}'; valid choices: {', '.join(BINARIZE_RULES)}")
    return out.numpy()
