"""Resampling a trained run: its saved generator, new sampling settings (e.g. guidance), no second training."""
from __future__ import annotations

import json
from pathlib import Path

from .base import Synthesizer

# run.json keys that describe the training, copied from the source run (the budget columns of the tables)
FIT_KEYS = ("fit_seconds", "n_params", "steps_per_second", "budget", "budget_fraction", "budget_flops",
            "budget_reference", "max_steps", "phases", "train_flops", "paper_flops", "fraction_of_paper", "epsilon",
            "dp")


def load_trained(source: str | Path, config: dict) -> tuple[Synthesizer, dict]:
    """(the trained generator of run directory `source` with this config's sampling settings, run.json keys
    describing its training plus `resampled_from`).

    `resample_from=<run dir>` skips fit: the run samples and scores the generator that run saved. The source must be
    a complete run of the same generator on the same data configuration; the model settings may differ only in the
    generator's `sampling_params` (EHRDiff: guidance_scale, label_prevalence, the sampler's steps), and those are
    applied before sampling. Each mismatch is one sentence."""
    src = Path(source).expanduser()
    run_json, saved = src / "run.json", src / "synthesizer"
    if not run_json.exists() or not (saved / "config.json").exists():
        raise FileNotFoundError(f"resample_from: {src} is not a complete run directory (expected run.json and "
                                "synthesizer/config.json)")
    try:
        info = json.loads(run_json.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"resample_from: {run_json} is unreadable ({str(e).strip().splitlines()[0]})") from None
    if not isinstance(info, dict):
        raise ValueError(f"resample_from: {run_json} is not a run record")
    if info.get("status") != "ok":
        raise ValueError(f"resample_from: the run in {src} has status {info.get('status')!r}, not 'ok'")
    mine, theirs = config["model"], (info.get("config") or {}).get("model", {})
    if theirs.get("name") != mine["name"]:
        raise ValueError(f"resample_from: {src} trained model '{theirs.get('name')}', not '{mine['name']}'")
    if (info.get("config") or {}).get("data") != config["data"]:
        raise ValueError(f"resample_from: {src} was trained on another data configuration than data "
                         f"'{config['data'].get('name')}' here; resample on the data it was trained on")
    if (info.get("config") or {}).get("canaries", 0) != config.get("canaries", 0):
        raise ValueError(f"resample_from: {src} was trained with canaries="
                         f"{(info.get('config') or {}).get('canaries', 0)}, not {config.get('canaries', 0)}: an audit "
                         "needs the canaries of its own training")
    synth = Synthesizer.load(saved)
    free = tuple(getattr(synth, "sampling_params", ()))
    trained = synth.get_params()
    for k, v in mine.items():
        if k in ("name", "label") or k in free or k not in trained:
            continue
        if json.loads(json.dumps(v)) != trained[k]:
            raise ValueError(f"resample_from: model.{k} is {v!r} here but {trained[k]!r} in the trained run {src}; "
                             f"only sampling parameters may change: {', '.join(free) or 'none for ' + mine['name']}")
    for k in free:
        if k in mine:
            setattr(synth, k, mine[k])
    if hasattr(synth, "_check_cond_params"):
        synth._check_cond_params()  # EHRDiff: guidance_scale >= 0, label_prevalence in [0, 1]
    fitted = {k: info[k] for k in FIT_KEYS if k in info}
    fitted["resampled_from"] = {"run_id": info.get("run_id"), "path": str(src.resolve()),
                                "settings_hash": info.get("settings_hash"), "git_commit": info.get("git_commit")}
    return synth, fitted
