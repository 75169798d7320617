"""The run record: the run directory's files and rules (run.lock, what an existing record allows, clean reruns),
the settings that make two runs comparable (settings_hash) and the data config key (data_key).

run_benchmark.py decides with `previous_run` + `decide` before it changes anything in the directory, takes
`RunLock` (fcntl.flock on `run.lock`, which holds the owner's PID), decides again under the lock, and only then
writes. The Trainer writes `checkpoint.pt` and `train_stats.jsonl` into the same directory.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ehrbench.data.cache import sha256_file

LOCK_NAME = "run.lock"
# everything a run writes except run.json (rewritten at the start of every run) and the lock itself
OUTPUTS = ("checkpoint.pt", "train_stats.jsonl", "curve.jsonl", "synthetic.npz", "results.jsonl", "synthesizer")
WORK = OUTPUTS  # a directory holding any of these holds work that other settings would contradict
# the files a complete run's record fingerprints (run.json "outputs": name -> sha256)
RECORDED = ("results.jsonl", "synthetic.npz", "curve.jsonl", "synthesizer/config.json", "synthesizer/state.pt")
SAVED = ("synthesizer/config.json", "synthesizer/state.pt")
# written by reports --extract-to into each run it unpacks: samples and generators never travel in an archive,
# so such a run is complete with its scores alone
ARCHIVED = "ARCHIVED"


class RunDirError(RuntimeError):
    """A run directory that cannot be used as asked (busy, or holding a run made with other settings)."""


@dataclass
class Previous:
    """What an existing run.json says: status (None: none or unreadable), recorded config, and a note."""

    status: str | None
    config: dict | None
    note: str | None = None
    record: dict | None = None


def previous_run(run_dir: Path) -> Previous:
    """Read run.json without changing anything; an unreadable or non-object run.json is reported, not fatal."""
    path = run_dir / "run.json"
    if not path.exists():
        return Previous(None, None)
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return Previous(None, None, f"{path} is unreadable ({str(e).splitlines()[0]}); running the cell again")
    if not isinstance(info, dict):
        return Previous(None, None, f"{path} holds a JSON {type(info).__name__}, not a run record; running the "
                                    "cell again")
    config = info.get("config") if isinstance(info.get("config"), dict) else None
    return Previous(str(info.get("status")) if info.get("status") is not None else None, config, record=info)


def has_work(run_dir: Path) -> bool:
    return any((run_dir / name).exists() for name in WORK)


def output_hashes(run_dir: Path) -> dict[str, str]:
    """sha256 of each RECORDED file the run directory holds (run.json keeps them as "outputs")."""
    return {name: sha256_file(run_dir / name) for name in RECORDED if (run_dir / name).is_file()}


def missing_outputs(run_dir: Path, record: dict) -> list[str]:
    """The outputs a complete run's record promises that are absent or changed, e.g. ["results.jsonl is missing"].
    Records without "outputs" (older runs) promise results.jsonl, synthetic.npz and synthesizer/ (unless
    resampled) and curve.jsonl (when curves were asked for); an extracted archive's run only its scores."""
    promised = record.get("outputs")
    if not isinstance(promised, dict):
        curve = ((record.get("config") or {}).get("curve") or {}).get("eval_at")
        promised = dict.fromkeys(["results.jsonl", "synthetic.npz", *([] if record.get("resampled_from") else SAVED),
                                  *(["curve.jsonl"] if curve else [])])
    if (run_dir / ARCHIVED).is_file():
        promised = {k: v for k, v in promised.items() if k.endswith(".jsonl")}
    out = []
    for name, digest in promised.items():
        path = run_dir / name
        if not path.is_file():
            out.append(f"{name} is missing")
        elif digest is not None and sha256_file(path) != digest:
            out.append(f"{name} changed since the run")
    return out


def decide(run_dir: Path, prev: Previous, same_settings: bool | None, changed: str, rerun: bool) -> str:
    """"run", "skip" (a complete run with these settings whose outputs are all there, as recorded), "resample"
    (such a run lost its sample or scores but kept synthesizer/: sample and score it again, no training) or
    "retrain" (it lost synthesizer/ or its curves: run it again from scratch); RunDirError for work made with
    other settings.

    same_settings is None when the previous settings are unknown (no readable record): the cell runs again and
    the Trainer still refuses a checkpoint of another model or other hyperparameters."""
    if rerun:
        return "run"
    if prev.status == "ok" and same_settings:
        missing = missing_outputs(run_dir, prev.record or {})
        if not missing:
            return "skip"
        lost = {m.split(" ")[0] for m in missing}
        kept = all((run_dir / name).is_file() for name in SAVED) and not lost & {*SAVED, "curve.jsonl"}
        return "resample" if kept and not (prev.record or {}).get("resampled_from") else "retrain"
    if same_settings is False and (prev.status == "ok" or has_work(run_dir)):
        what = "a complete run" if prev.status == "ok" else f"an unfinished run (status {prev.status})"
        raise RunDirError(f"{run_dir} already holds {what} made with other settings ({changed}); pass rerun=true "
                          "to replace it or choose another directory")
    return "run"


def clear_outputs(run_dir: Path) -> None:
    """rerun=true: remove every output of the earlier run, so nothing of it can sit next to the new record."""
    for name in OUTPUTS:
        p = run_dir / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def remove_empty(run_dir: Path, stop: Path) -> None:
    """Remove run_dir and its parents below `stop` while they are empty (the folders Hydra made for a run that
    was refused before it started, or an export that makes no run)."""
    d, stop = run_dir.resolve(), stop.resolve()
    while d != stop and stop in d.parents and d.is_dir() and not any(d.iterdir()):
        d.rmdir()
        d = d.parent


def describe_changes(diff: dict[str, tuple[Any, Any]], limit: int = 3) -> str:
    """'n_samples: 1600 -> 50, model.lr: 0.001 -> 0.0001' (the first `limit` keys, then '+N more')."""
    items = [f"{k}: {json.dumps(a, default=str)} -> {json.dumps(b, default=str)}" for k, (a, b) in diff.items()]
    return ", ".join(items[:limit]) + (f", +{len(items) - limit} more" if len(items) > limit else "")


class RunLock:
    """Exclusive lock on a run directory: flock on run.lock, which holds the owner's PID while it runs.

    The kernel drops a flock when its process dies, so a lock left by a killed run is simply taken over (its
    stale PID is reported as `stale_pid`). Another live holder gives a RunDirError naming its PID. On release
    the file is removed while still locked; an acquirer that locked a removed file retries on the new one.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None
        self.stale_pid: int | None = None

    def _holder(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise RunDirError(f"{self.path.parent} is in use by process {self._holder()} (it holds "
                                  f"{LOCK_NAME}); wait for it to finish or choose another directory") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed the file after we opened it: lock the new one
        old = os.read(fd, 64).decode(errors="replace").strip()
        self.stale_pid = int(old) if old.isdigit() and int(old) != os.getpid() else None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---- settings: what two runs must share to be comparable (run_benchmark writes them, reports read them) -----
RESERVED_DATA_KEYS = ("name", "sigma_data")  # sigma_data is a model hint in the data YAML, not a data property
# data options that name a file or the network: a report never takes them from a run's record (whoever wrote the
# runs chose them), so building a report never downloads and never reads a file the user did not name
LOCATION_KEYS = ("path", "columns_file", "url", "sha256", "download")
WHERE_KEYS = ("path", "url", "sha256", "download")  # where the data came from, not what it is: not in data_key
# Keys of the resolved configuration that do not change a run's results (docs/guide.md "What happens when..."): left out
# of settings(), so runs that differ only here resume each other and share a leaderboard row. The seed is left
# out because seeds are what a row averages over; trainer.device because the same settings run anywhere (the
# device is recorded per run and shown in the reports).
NON_SETTINGS = ("seed", "rerun", "tag", "paths", "export", "resample_from", "trainer.device", "trainer.progress",
                "trainer.log_every", "trainer.checkpoint_every")


def data_key(data_cfg: dict | None) -> str:
    """Short hash of a dataset config (minus reserved keys and where the files were: the same data read from two
    folders is one data config): runs with different keys never share a table."""
    if not data_cfg:
        return "unknown"
    kw = {k: v for k, v in data_cfg.items() if k not in (*RESERVED_DATA_KEYS, *WHERE_KEYS)}
    return hashlib.sha1(json.dumps({"name": data_cfg.get("name"), **kw}, sort_keys=True, default=str).encode()).hexdigest()[:8]


# keys added after runs were recorded, at their neutral value: absent and neutral are the same setting
ADDED_SETTINGS = {"split_from_seed": False, "trainer.dp": None, "trainer.fast": False, "model.cond_label": False, "model.guidance_scale": 0.0,
                  "model.label_dropout": 0.1, "model.class_dim": 128, "model.label_prevalence": None}


def settings(config: dict) -> dict:
    """The resolved configuration minus NON_SETTINGS (JSON-normalised): what two runs must share to be comparable."""
    out = json.loads(json.dumps(config, default=str))
    for key, neutral in ADDED_SETTINGS.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node and node[leaf] == neutral:
            node.pop(leaf)
    for key in NON_SETTINGS:
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def settings_hash(config: dict | None) -> str | None:
    """12-hex sha256 of settings(config) (None without a config); run.json and every results row record it."""
    if not isinstance(config, dict):
        return None
    return hashlib.sha256(json.dumps(settings(config), sort_keys=True).encode()).hexdigest()[:12]


def settings_diff(a: dict, b: dict, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two settings dicts: {key: (value in a, value in b)}."""
    out: dict[str, tuple[Any, Any]] = {}
    for k in sorted(set(a) | set(b), key=str):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.update(settings_diff(va, vb, f"{prefix}{k}."))
        elif va != vb:
            out[f"{prefix}{k}"] = (va, vb)
    return out
