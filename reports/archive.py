"""runs.tar.gz: the small files of a runs folder, enough to rebuild its tables and to resume its suite."""
from __future__ import annotations

import contextlib
import gzip
import io
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .load import find_run_dirs

ARCHIVE_NAME = "runs.tar.gz"
KEPT = ("run.json", "results.jsonl", "curve.jsonl")  # kept whole: the tables, curves and the resume record
STATS = "train_stats.jsonl"  # kept thinned: the loss figure
MAX_STAT_LINES = 2000
# synthetic.npz never travels: a sample is patient-level data (the `real` reference's is a resample of the training
# records, and a generator's can hold exact copies of them), and licensed data must not leave its folder


def thin_lines(text: str, most: int = MAX_STAT_LINES) -> str:
    """At most `most` lines, evenly spaced over the run, the first and the last always kept."""
    lines = text.splitlines()
    if len(lines) <= most:
        return text
    keep = np.unique(np.linspace(0, len(lines) - 1, most).round().astype(int))
    return "\n".join(lines[i] for i in keep) + "\n"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: the same runs pack to the same bytes
    tar.addfile(info, io.BytesIO(data))


def pack(runs_dir: str | Path, out_file: str | Path, max_stat_lines: int = MAX_STAT_LINES) -> dict[str, int]:
    """Write out_file (a tar.gz) with, per run directory under runs_dir (paths relative to it): run.json,
    results.jsonl, curve.jsonl, .hydra/*.yaml and train_stats.jsonl thinned to max_stat_lines; no sample and no
    checkpoint. Returns counts of runs, files and bytes."""
    root = Path(runs_dir)
    dirs = find_run_dirs(root)  # raises on a missing folder
    if not dirs:
        raise FileNotFoundError(f"no run directories under {root} (expected .../seed_<n>/run.json)")
    n_files = 0
    from ehrbench.data.cache import atomic_path  # written under a temporary name, then renamed

    with atomic_path(Path(out_file)) as tmp, open(tmp, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
            for d in dirs:
                rel = d.relative_to(root).as_posix()
                files = [(n, (d / n).read_bytes()) for n in KEPT if (d / n).is_file()]
                files += [(f".hydra/{p.name}", p.read_bytes()) for p in sorted((d / ".hydra").glob("*.yaml"))]
                if (d / STATS).is_file():
                    text = (d / STATS).read_text(errors="replace")
                    files.append((STATS, thin_lines(text, max_stat_lines).encode()))
                for name, data in files:
                    _add(tar, f"{rel}/{name}" if rel != "." else name, data)
                n_files += len(files)
    return {"runs": len(dirs), "files": n_files, "bytes": Path(out_file).stat().st_size}


def unpack(archive: str | Path, dest: str | Path) -> Path:
    """Extract archive into dest (made if needed). Nothing is written when a member would land outside dest, is a
    link or a device, or would replace a file already in dest (a run there is never overwritten). Each extracted
    run gets an ARCHIVED note (models/rundir.py), so a resumed suite takes it as complete without its sample and
    generator. Returns dest."""
    archive, dest = Path(archive), Path(dest)
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                target = (dest / m.name).resolve()
                if not (m.isfile() or m.isdir()) or not target.is_relative_to(dest.resolve()):
                    raise ValueError(f"{archive} holds {m.name!r}, which is not a plain file inside the archive's "
                                     "folder; refusing to extract it")
            clash = [m.name for m in members if m.isfile() and (dest / m.name).exists()]
            if clash:
                raise ValueError(f"{dest} already holds {clash[0]} and {len(clash) - 1} more of the archive's files; "
                                 "nothing was extracted (extract into an empty folder, or move those runs away first)")
            dest.mkdir(parents=True, exist_ok=True)
            # members were checked above; the "data" filter (Python >= 3.11.4) checks again where it exists
            kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(dest, members=members, **kw)
        from ehrbench.models.rundir import ARCHIVED

        for m in members:  # complete with their scores alone: an archive never holds samples or generators
            if m.isfile() and m.name.endswith("run.json") and not (dest / m.name).with_name(ARCHIVED).exists():
                (dest / m.name).with_name(ARCHIVED).write_text(f"extracted from {archive.name}: samples and the "
                                                               "trained generator were not kept\n")
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, OSError) as e:
        if isinstance(e, FileNotFoundError) and not archive.exists():
            raise FileNotFoundError(f"{archive} does not exist") from None
        raise ValueError(f"{archive} is not a readable tar.gz archive ({type(e).__name__}: {e})") from None
    return dest


def is_archive(path: str | Path) -> bool:
    return str(path).endswith((".tar.gz", ".tgz"))


@contextlib.contextmanager
def opened(runs: str | Path) -> Iterator[Path]:
    """A runs folder as is, or an archive extracted into a temporary folder that is removed afterwards."""
    if not is_archive(runs):
        yield Path(runs)
        return
    with tempfile.TemporaryDirectory(prefix="ehrbench-runs-") as tmp:
        yield unpack(runs, tmp)
