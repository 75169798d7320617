"""The "external" synthesizer: loads NPZ/NPY/CSV/Parquet samples, checks them against the dataset, saves/loads."""
import warnings

import numpy as np
import pandas as pd
import pytest

from ehrbench.data import load_dataset
from ehrbench.models.base import Synthesizer, build_synthesizer
from ehrbench.models.external import ExternalSynthesizer  # noqa: F401  (registers "external")


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", n_patients=300, n_codes=12, seed=2)


@pytest.fixture
def rows(data):
    return data.test.copy()  # 30 records the "other tool" produced


def write(path, X, columns):
    if path.suffix == ".npz":
        np.savez(path, X=X, columns=np.asarray(columns))
    elif path.suffix == ".npy":
        np.save(path, X)
    elif path.suffix == ".csv":
        pd.DataFrame(X, columns=columns).to_csv(path, index=False)
    else:
        pd.DataFrame(X, columns=columns).to_parquet(path)
    return str(path)


@pytest.mark.parametrize("ext", [".npz", ".npy", ".csv", ".parquet"])
def test_formats_roundtrip(tmp_path, data, rows, ext):
    s = build_synthesizer("external", path=write(tmp_path / f"s{ext}", rows, data.columns)).fit(data, trainer=None)
    out = s.sample(len(rows), seed=0)
    assert out.dtype == np.float32 and np.array_equal(out, rows) and s.n_params == 0
    s.save(tmp_path / "saved")
    again = Synthesizer.load(tmp_path / "saved")
    assert isinstance(again, ExternalSynthesizer) and np.array_equal(again.sample(len(rows), seed=0), rows)


def test_sample_subsets_and_warns_when_too_many_requested(tmp_path, data, rows):
    s = build_synthesizer("external", path=write(tmp_path / "s.npz", rows, data.columns)).fit(data)
    a, b = s.sample(10, seed=1), s.sample(10, seed=1)
    assert a.shape == (10, data.n_features) and np.array_equal(a, b)
    assert not np.array_equal(a, s.sample(10, seed=2))
    assert {tuple(r) for r in a} <= {tuple(r) for r in rows}
    with pytest.warns(UserWarning, match=f"100 samples requested but .* holds {len(rows)} records"):
        assert len(s.sample(100, seed=0)) == len(rows)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.sample(len(rows), seed=0)  # exactly all rows: no warning


def test_width_and_column_name_errors(tmp_path, data, rows):
    cols = list(data.columns)
    with pytest.raises(ValueError, match=f"has {data.n_features}"):
        build_synthesizer("external", path=write(tmp_path / "w.npy", rows[:, :-1], None)).fit(data)
    bad = cols.copy()
    bad[3] = "D_99"
    with pytest.raises(ValueError, match="column 3 is 'D_99', the dataset expects 'D_03'"):
        build_synthesizer("external", path=write(tmp_path / "n.csv", rows, bad)).fit(data)
    with pytest.raises(ValueError, match="missing column 'MORTALITY'"):
        build_synthesizer("external", path=write(tmp_path / "m.csv", rows[:, :-1], cols[:-1])).fit(data)


def test_reordered_columns_are_aligned(tmp_path, data, rows):
    perm = np.random.default_rng(0).permutation(data.n_features)
    path = write(tmp_path / "r.parquet", rows[:, perm], [data.columns[j] for j in perm])
    assert np.array_equal(build_synthesizer("external", path=path).fit(data).sample(len(rows)), rows)


def test_value_and_path_errors(tmp_path, data, rows):
    bad = rows.copy()
    bad[4, 1] = 0.5
    with pytest.raises(ValueError, match="non-binary value 0.5 in row 4, D_01"):
        build_synthesizer("external", path=write(tmp_path / "b.npz", bad, data.columns)).fit(data)
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite value"):
        build_synthesizer("external", path=write(tmp_path / "f.npz", bad, data.columns)).fit(data)
    with pytest.raises(ValueError, match="needs model.path"):
        build_synthesizer("external").fit(data)
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_synthesizer("external", path=str(tmp_path / "nope.npz")).fit(data)
    with pytest.raises(ValueError, match="unsupported file type .txt; valid choices"):
        build_synthesizer("external", path=str(tmp_path / "x.txt")).fit(data)
    np.savez(tmp_path / "nox.npz", Y=rows)
    with pytest.raises(ValueError, match="has no array 'X'"):
        build_synthesizer("external", path=str(tmp_path / "nox.npz")).fit(data)
