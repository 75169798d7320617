"""File access for the loaders: locate inputs, sha256, strict CSV reading, atomic writes and a verified download cache."""
from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import tempfile
import urllib.parse
import urllib.request
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pandas as pd


def cache_root() -> Path:
    """Folder of downloaded and extracted files: $EHRBENCH_CACHE, else ~/.cache/ehrbench."""
    return Path(os.environ.get("EHRBENCH_CACHE") or Path.home() / ".cache" / "ehrbench")


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def find_file(folder: str | Path, names: Sequence[str], what: str, how_to_get: str) -> Path:
    """First of `names` that exists in `folder`; FileNotFoundError naming what was looked for and how to get it."""
    folder = Path(folder)
    for name in names:
        if (folder / name).is_file():
            return folder / name
    if not folder.exists():
        raise FileNotFoundError(f"{what}: folder {folder} does not exist; {how_to_get}")
    raise FileNotFoundError(f"{what}: none of {', '.join(names)} found in {folder}; {how_to_get}")


# the causes of a failed write that are the machine's, not the program's
WRITE_FAILURES = {errno.ENOSPC: "the disk is full", errno.EFBIG: "the file size limit was reached (ulimit -f)",
                  errno.EDQUOT: "the disk quota is used up", errno.EROFS: "the file system is read-only",
                  errno.EACCES: "permission denied"}


def write_failure(dest: str | Path, e: BaseException) -> OSError | None:
    """One sentence naming `dest` and the cause when `e` (or the error it wraps, e.g. torch's RuntimeError
    around an OSError) is a disk-full, size-limit, quota, read-only or permission failure; else None."""
    for err in (e, e.__cause__, e.__context__):
        if isinstance(err, OSError) and err.errno in WRITE_FAILURES:
            failure = OSError(f"could not write {dest}: {WRITE_FAILURES[err.errno]} (nothing was left half-written)")
            failure.errno = err.errno
            return failure
    return None


@contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `dest`; rename it onto `dest` only if the block succeeds, else delete it.
    A disk-full or size-limit failure becomes one sentence naming `dest` (write_failure)."""
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as e:
        raise (write_failure(dest, e) or e) from None
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the renamed file gets an ordinary file's mode
    try:
        yield tmp
        os.replace(tmp, dest)
    except Exception as e:
        failure = write_failure(dest, e)
        if failure is None:
            raise
        raise failure from None
    finally:
        if tmp.exists():
            tmp.unlink()


def ensure_cached(dest: str | Path, build: Callable[[Path], None], sha256: str | None = None) -> Path:
    """Return `dest`, (re)building it with `build(tmp_path)` when absent or when its sha256 no longer matches.

    The file is written to a temporary name and renamed, so a failed build never leaves a half-written cache;
    a freshly built file whose sha256 differs from `sha256` is deleted and reported.
    """
    dest = Path(dest)
    if dest.is_file() and (sha256 is None or sha256_file(dest) == sha256):
        return dest
    with atomic_path(dest) as tmp:
        build(tmp)
        if sha256 is not None:
            got = sha256_file(tmp)
            if got != sha256:
                raise ValueError(f"{dest.name}: sha256 {got} does not match the expected {sha256}; "
                                 "the source changed or the transfer was corrupted, so nothing was cached")
    return dest


def fetch(url: str, dest: str | Path, sha256: str | None = None) -> Path:
    """Download `url` once to `dest` (verified against `sha256` when given; a mismatching cache is re-downloaded)."""

    if urllib.parse.urlsplit(url).scheme not in ("https", "http"):
        raise ValueError(f"could not download {url}: only http(s) addresses are fetched; for a local copy give its "
                         "folder as data.path")

    def download(tmp: Path) -> None:
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
                shutil.copyfileobj(response, out, length=1 << 22)
        except OSError as e:
            raise OSError(f"could not download {url} to {dest}: {e}; download it by hand into {Path(dest).parent}") from e

    return ensure_cached(dest, download, sha256)


def extract_member(archive: str | Path, member_suffix: str, dest: str | Path, sha256: str | None = None) -> Path:
    """Extract the zip member whose name ends with `member_suffix` to `dest` (atomic, verified, rebuilt on mismatch)."""

    def extract(tmp: Path) -> None:
        with zipfile.ZipFile(archive) as z:
            names = [n for n in z.namelist() if n.endswith(member_suffix)]
            if len(names) != 1:
                raise ValueError(f"{archive}: expected one member ending in {member_suffix}, found {len(names)} "
                                 f"among {', '.join(z.namelist()[:10])}")
            with z.open(names[0]) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, length=1 << 22)

    return ensure_cached(dest, extract, sha256)


def csv_header(path: str | Path, expected: Sequence[str] = ()) -> pd.Index:
    """The raw first row of a CSV(.gz) (pandas' own header parsing would rename a repeated name to "name.1")."""
    try:
        return pd.Index(pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False).iloc[0])
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError) as e:
        raise ValueError(f"{path}: cannot read a CSV header ({str(e).strip()})"
                         + (f"; expected columns {', '.join(expected)}" if expected else "")) from None


def read_csv_strict(path: str | Path, required: Sequence[str], optional: Sequence[str] = (), *,
                    dtype: type | str = str, case_insensitive: bool = True, na_values: Sequence[str] = ("",),
                    **kwargs) -> pd.DataFrame:
    """Read the `required` (+ present `optional`) columns of a CSV(.gz) as strings with one-sentence errors.

    Column names are matched case-insensitively and returned lower-cased (MIMIC-III upper-case and MIMIC-IV / demo
    lower-case headers both work). A row with too many fields is an error naming its line; a short row leaves NaN in
    its missing fields, which the callers report with the line.
    """
    path = Path(path)
    header = csv_header(path, required)
    norm = [c.strip().lower() if case_insensitive else c for c in header]
    want = [r.lower() if case_insensitive else r for r in required]
    missing = [r for r, w in zip(required, want) if w not in norm]
    if missing:
        raise ValueError(f"{path}: missing required column {missing[0]!r}; expected {', '.join(required)} "
                         f"(found {', '.join(map(str, header[:12]))})")
    dup = [c for i, c in enumerate(norm) if c in norm[:i]]
    if dup:
        raise ValueError(f"{path}: column {dup[0]!r} appears twice in the header; column names must be unique")
    opt = [o for o in optional if (o.lower() if case_insensitive else o) in norm]
    try:
        # all columns are parsed (not usecols): with usecols pandas silently truncates rows that have extra fields
        df = pd.read_csv(path, dtype=dtype, keep_default_na=False, na_values=list(na_values), **kwargs)
    except pd.errors.ParserError as e:
        line = re.search(r"line (\d+)", str(e))
        where = f"line {line.group(1)}" if line else "a row"
        raise ValueError(f"{path}: malformed CSV row at {where} ({str(e).strip()}); expected {len(header)} "
                         f"comma-separated fields per row") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text CSV ({e.reason} at byte {e.start})") from None
    df.columns = norm
    keep = {c.lower() if case_insensitive else c for c in [*required, *opt]}
    return df[[c for c in norm if c in keep]]

