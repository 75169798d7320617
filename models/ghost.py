"""Ghost (book-keeping) clipping: DP-SGD's clipped sum of per-record gradients from one batched backward pass."""
from __future__ import annotations

import math
import weakref
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

SUPPORTED = (nn.Linear, nn.LayerNorm, nn.Embedding)
ROW_REDUCTIONS = ("mean", "sum")
# modules_ -> {loss key: None once the first call's exact check passed, or why ghost clipping failed at run time}
_CHECKED: "weakref.WeakKeyDictionary[nn.Module, dict[str, str | None]]" = weakref.WeakKeyDictionary()


class GhostUnsupported(Exception):
    """This loss's per-record gradients cannot be read off its batched backward pass (the caller falls back)."""


def ghost_refusal(synth: Any, key: str, params: list[nn.Parameter]) -> str | None:
    """None when ghost clipping applies to `params` of synth.loss(., key), else the reason (static checks, and any
    run-time failure seen before).

    Needs: a loss that does not differentiate inside (dp_vmap), that the model declares a mean or a sum over rows
    of per-row terms (`row_reduction`; row j's term depends on row j's input and draws only, and every layer
    sees the rows along dim 0 in batch order), and every parameter in `params` owned by exactly one Linear,
    LayerNorm or Embedding (no max_norm, no scale_grad_by_freq)."""
    if not getattr(synth, "dp_vmap", True):
        return "its loss differentiates inside itself (a gradient penalty)"
    if getattr(synth, "row_reduction", None) not in ROW_REDUCTIONS:
        return "it does not declare its loss a mean or sum of per-row terms (row_reduction)"
    want, owner = {id(p) for p in params}, {}
    for name, m in synth.modules_.named_modules():
        for pn, p in m.named_parameters(recurse=False):
            if id(p) not in want:
                continue
            if not isinstance(m, SUPPORTED):
                return f"parameter '{name}.{pn}' belongs to a {type(m).__name__}, not a Linear, LayerNorm or Embedding"
            if id(p) in owner:
                return f"parameter '{name}.{pn}' is shared with '{owner[id(p)]}'"
            if isinstance(m, nn.Embedding) and (m.max_norm is not None or m.scale_grad_by_freq):
                return f"embedding '{name}' renormalises rows or scales gradients by frequency"
            owner[id(p)] = name
    if len(owner) < len(want):
        return "some of its trainable parameters are not in its modules"
    return _CHECKED.get(synth.modules_, {}).get(key)


def ghost_clipped_sum(synth: Any, key: str, x: torch.Tensor, params: list[nn.Parameter], K: int,
                      max_grad_norm: float) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """(the clipped per-record gradients summed, one tensor per parameter; the sum of the records' losses; the
    per-record gradient norms) for the records x, each seen K times. Raises GhostUnsupported when a run-time
    check fails (a parameter without a layer call, a layer input whose dim 0 is not the rows, an in-place change
    of a saved tensor, or, on the first call per model and key, a gradient sum unequal to autograd's)."""
    B, M = len(x), len(x) * K
    # d(record loss)/d(batch loss) per row; a record's loss is the mean of its K copies' terms (DPDM), so a loss that
    # sums over rows contributes 1/K per copy
    s = float(B) if synth.row_reduction == "mean" else 1.0 / K
    want = {id(p) for p in params}
    mods = [(n, m) for n, m in synth.modules_.named_modules()
            if any(id(p) in want for p in m.parameters(recurse=False))]
    calls: dict[str, list] = {n: [] for n, _ in mods}

    def saver(name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            inp = args[0] if args else next(iter(kwargs.values()))
            if torch.is_grad_enabled() and isinstance(out, torch.Tensor) and out.requires_grad:
                calls[name].append((inp, inp._version, out, out._version))
        return hook

    handles = [m.register_forward_hook(saver(n), with_kwargs=True) for n, m in mods]
    try:
        loss = synth.loss(x.repeat_interleave(K, 0), key)  # rows r*K .. r*K+K-1 are record r
    finally:
        for h in handles:
            h.remove()
    for n, cs in calls.items():
        if not cs:
            raise GhostUnsupported(f"layer '{n}' was not called with gradients in the loss")
        for inp, iv, out, ov in cs:
            if not isinstance(inp, torch.Tensor) or inp.shape[:1] != (M,) or out.shape[:1] != (M,):
                raise GhostUnsupported(f"layer '{n}' saw an input whose first dimension is not the batch's rows")
            if inp._version != iv or out._version != ov:
                raise GhostUnsupported(f"the input or output of layer '{n}' was changed in place")
    checked = _CHECKED.setdefault(synth.modules_, {})
    verify = key not in checked
    outs = [c[2] for n, _ in mods for c in calls[n]]
    grads = list(torch.autograd.grad(loss, outs + (params if verify else []), allow_unused=True))
    grads = [torch.zeros_like(o) if g is None else g for o, g in zip(outs, grads)] + grads[len(outs):]
    layers, i = [], 0
    for n, m in mods:
        pairs = [(c[0].detach(), grads[i + j]) for j, c in enumerate(calls[n])]
        i += len(pairs)
        layers.append(_layer(m, pairs, B, want))
    sq = torch.zeros(B, dtype=params[0].dtype, device=x.device)
    for layer in layers:
        for norm2, _ in layer.values():
            sq = sq + norm2.to(sq.dtype)
    norms = s * sq.sqrt()
    if verify:
        plain = _sums(layers, params, torch.ones_like(norms), s)
        for p, mine, ref in zip(params, plain, grads[len(outs):]):
            ref = torch.zeros_like(p) if ref is None else s * ref
            if not bool((mine - ref).norm() <= 1e-4 * ref.norm() + 1e-12):
                checked[key] = "its per-record gradients do not add up to the batch gradient (a parameter used "\
                               "outside its layer)"
                raise GhostUnsupported(checked[key])
        checked[key] = None
    factor = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    return _sums(layers, params, factor, s), s * loss.detach(), norms


def _layer(m: nn.Module, pairs: list, B: int, want: set[int]) -> dict[int, tuple[torch.Tensor, Any]]:
    """{id(parameter): (per-record squared gradient norm / s^2, clipped-sum function of the factors)} for one layer,
    its calls' (input, output gradient) pairs concatenated along the positions of each record (K copies x extra
    dims x calls)."""
    out = {}
    if isinstance(m, nn.Linear):
        A, G = _cat([a for a, _ in pairs], B), _cat([g for _, g in pairs], B)
        T, (p, d) = A.shape[1], m.weight.shape
        if id(m.weight) in want:
            if T == 1:
                n2 = _sq(A) * _sq(G)
            elif T * T <= p * d:  # the Gram trick: ||sum_i g_i a_i^T||^2 = sum_ij (a_i.a_j)(g_i.g_j)
                n2 = (A @ A.transpose(1, 2) * (G @ G.transpose(1, 2))).sum((1, 2))
            else:  # fewer numbers to materialise the per-record gradient (Bu et al.'s mixed ghost norm)
                n2 = _sq(G.transpose(1, 2) @ A)

            def weight_sum(c: torch.Tensor, A=A, G=G) -> torch.Tensor:  # scale the narrower of G and A by c
                if p <= d:
                    return (G * c[:, None, None]).reshape(-1, p).T @ A.reshape(-1, d)
                return G.reshape(-1, p).T @ (A * c[:, None, None]).reshape(-1, d)
            out[id(m.weight)] = (n2, weight_sum)
        if m.bias is not None and id(m.bias) in want:
            gb = G.sum(1)
            out[id(m.bias)] = (_sq(gb), lambda c: c @ gb)
    elif isinstance(m, nn.LayerNorm):
        shape, n = tuple(m.normalized_shape), math.prod(m.normalized_shape)
        gw = sum((g * F.layer_norm(a, shape, None, None, m.eps)).reshape(B, -1, n).sum(1) for a, g in pairs)
        gb = sum(g.reshape(B, -1, n).sum(1) for _, g in pairs)
        for q, per in ((m.weight, gw), (m.bias, gb)):
            if q is not None and id(q) in want:
                out[id(q)] = (_sq(per), lambda c, per=per: (c @ per).reshape(shape))
    elif isinstance(m, nn.Embedding):
        idx = torch.cat([a.reshape(B, -1) for a, _ in pairs], 1)
        G = _cat([g for _, g in pairs], B)
        if m.padding_idx is not None:
            G = G * (idx != m.padding_idx).unsqueeze(-1)
        T, (V, D) = idx.shape[1], m.weight.shape
        if T * T <= V * D:  # only positions that look up the same row interact
            n2 = ((idx[:, :, None] == idx[:, None, :]) * (G @ G.transpose(1, 2))).sum((1, 2))
        else:
            n2 = _sq(torch.zeros(B, V, D, dtype=G.dtype, device=G.device).scatter_add_(
                1, idx.unsqueeze(-1).expand(-1, -1, D), G))
        out[id(m.weight)] = (n2, lambda c: torch.zeros(V, D, dtype=G.dtype, device=G.device).index_add_(
            0, idx.reshape(-1), (G * c[:, None, None]).reshape(-1, D)))
    return out


def _cat(xs: list[torch.Tensor], B: int) -> torch.Tensor:
    """(B, positions, features): each record's rows, extra dims and calls along dim 1 (no copy for one call)."""
    xs = [x.reshape(B, -1, x.shape[-1]) for x in xs]
    return xs[0] if len(xs) == 1 else torch.cat(xs, 1)


def _sq(x: torch.Tensor) -> torch.Tensor:
    """Per-record squared L2 norm of a (B, ...) tensor."""
    return torch.linalg.vector_norm(x.reshape(len(x), -1), dim=1).square()


def _sums(layers: list[dict], params: list[nn.Parameter], factor: torch.Tensor, s: float) -> list[torch.Tensor]:
    """s * sum_r factor_r * (record r's share of the batch gradient), per parameter: one matmul per weight."""
    fns = {k: fn for layer in layers for k, (_, fn) in layer.items()}
    return [fns[id(p)]((s * factor).to(p.dtype)).reshape(p.shape) for p in params]
