"""Export a dataset's train/holdout/test split (CSV or Parquet) with a fingerprint, for tools outside ehrbench."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .base import EHRData
from .cache import atomic_path

FORMATS = ("csv", "parquet")
SPLITS = ("train", "holdout", "test")


def split_fingerprint(data: EHRData) -> str:
    """sha256 (first 16 hex digits) of the training split: column names and kinds, then the float32 matrix bytes.

    An outside tool that trained on an exported split hands this back (model.fingerprint, or a `fingerprint`
    array in its .npz), and the external scorer refuses samples made from any other split."""
    h = hashlib.sha256()
    h.update(json.dumps([list(data.columns), list(data.kinds)]).encode())
    h.update(np.ascontiguousarray(data.train, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def export_split(data: EHRData, directory: str | Path, fmt: str = "csv") -> dict:
    """Write train/holdout/test with column names plus split.json (dataset, columns, kinds, labels, rows,
    fingerprint) into `directory`; every file under a temporary name first. Returns split.json's content."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; valid choices: {', '.join(FORMATS)}")
    import pandas as pd

    out = Path(directory)
    files = {}
    for split in SPLITS:
        X = getattr(data, split)
        df = pd.DataFrame(X, columns=list(data.columns))
        binary = [c for c, k in zip(data.columns, data.kinds) if k == "binary"]
        df[binary] = df[binary].astype(np.int8)  # 0/1 codes as integers; continuous columns stay float32
        files[split] = f"{split}.{fmt}"
        with atomic_path(out / files[split]) as tmp:
            df.to_csv(tmp, index=False) if fmt == "csv" else df.to_parquet(tmp, index=False)
    meta = {"dataset": data.name, "format": fmt, "files": files, "columns": list(data.columns),
            "kinds": list(data.kinds), "label_columns": list(data.label_columns),
            "rows": {s: len(getattr(data, s)) for s in SPLITS}, "fingerprint": split_fingerprint(data)}
    with atomic_path(out / "split.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
    return meta
