"""matrix loader (CSV / Parquet / NPZ user matrices) and ehrdiff_npy (the EHRDiff authors' .npy files)."""
import json

import numpy as np
import pandas as pd
import pytest

from ehrbench.data import load_dataset
from ehrbench.data.matrix import minmax_inverse
from test_data_mimic3 import in_file_order

CSV = "pid,D_1,D_2,AGE,DEATH\n7,1,0,54.5,0\n8,0,1,71,1\n9,1,1,33,0\n10,0,0,80,1\n"
X_REF = np.array([[1, 0, 54.5, 0], [0, 1, 71, 1], [1, 1, 33, 0], [0, 0, 80, 1]], np.float32)


def test_csv_kinds_inferred_id_dropped(tmp_path):
    f = tmp_path / "m.csv"
    f.write_text(CSV)
    d = load_dataset("matrix", path=str(f), id_column="pid", label_columns=["DEATH"], split=[1, 0, 0])
    assert d.columns == ("D_1", "D_2", "AGE", "DEATH") and d.label_columns == ("DEATH",)
    assert d.kinds == ("binary", "binary", "continuous", "binary")
    np.testing.assert_array_equal(in_file_order(d), X_REF)
    d2 = load_dataset("matrix", path=str(f), id_column="pid", kinds={"DEATH": "continuous"}, split=[1, 0, 0])
    assert d2.kinds[-1] == "continuous"


def test_parquet_npz_and_scaling(tmp_path):
    df = pd.DataFrame(X_REF, columns=["D_1", "D_2", "AGE", "DEATH"])
    df.to_parquet(tmp_path / "m.parquet")
    d = load_dataset("matrix", path=str(tmp_path / "m.parquet"), split=[1, 0, 0])
    np.testing.assert_array_equal(in_file_order(d), X_REF)
    np.savez(tmp_path / "synthetic.npz", X=X_REF, columns=np.array(df.columns, dtype=str),
             label_columns=np.array(["DEATH"]))
    d = load_dataset("matrix", path=str(tmp_path / "synthetic.npz"), scale=True, split=[1, 0, 0])
    Z = in_file_order(d)
    assert d.label_columns == ("DEATH",) and d.meta["scaling"] == {"AGE": [33.0, 80.0]}
    np.testing.assert_allclose(Z[:, 2], (X_REF[:, 2] - 33) / 47, rtol=1e-6)
    np.testing.assert_allclose(minmax_inverse(Z, d.meta["scaling"], d.columns), X_REF, rtol=1e-6)


@pytest.mark.parametrize("text,kw,message", [
    ("a,b\n1,0\n,1\n0,1\n", {}, r"m\.csv: missing or non-finite value in row 1, column 'a'"),
    ("a,b\n1,0\nx,1\n0,1\n", {}, r"non-numeric value 'x' in row 1, column 'a'"),
    ("a,b\n1,0\n1,1\n1,0\n", {}, r"column 'a' is constant .*drop_constant=true"),
    ("a,b\n1,0\n2,1\n0,1\n", {"kinds": "binary"}, r"non-binary value 2 in binary column 'a' \(row 1\)"),
    ("id,b\n1,0\n1,1\n2,0\n", {"id_column": "id"}, r"duplicated patient '1' in column 'id' \(row 1\)"),
    ("a,b\n1,0\n0,1,5\n1,1\n", {}, "malformed CSV row at line 3"),
    ("a,a\n1,0\n0,1\n1,1\n", {}, "appears twice"),
    ("a,b\n1,0\n0,1\n1,1\n", {"label_columns": ["y"]}, "column 'y' .* not found"),
    ("a,b\n1,0\n0,1\n1,1\n", {"kinds": {"a": "ordinal"}}, "unknown column kind 'ordinal'"),
])
def test_bad_input_messages(tmp_path, text, kw, message):
    f = tmp_path / "m.csv"
    f.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_dataset("matrix", path=str(f), **kw)


def test_constant_columns_dropped_on_request_and_missing_files(tmp_path):
    f = tmp_path / "m.csv"
    f.write_text("a,b,c\n1,0,5\n0,1,5\n1,1,5\n")
    d = load_dataset("matrix", path=str(f), drop_constant=True)
    assert d.columns == ("a", "b") and d.meta["dropped_columns"] == ["c"]
    np.savez(tmp_path / "obj.npz", X=np.eye(3), columns=np.array(["a", "b", "c"], dtype=object))
    with pytest.raises(ValueError, match="unreadable NPZ"):
        load_dataset("matrix", path=str(tmp_path / "obj.npz"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("matrix", path=str(tmp_path / "nope.csv"))
    with pytest.raises(ValueError, match="no file given"):
        load_dataset("matrix")
    (tmp_path / "m.xlsx").write_text("x")
    with pytest.raises(ValueError, match="unknown matrix format"):
        load_dataset("matrix", path=str(tmp_path / "m.xlsx"))


def _npy(tmp_path, seed=0, n_train=40, n_test=20, width=6):
    rng = np.random.default_rng(seed)
    A = (rng.random((n_train, width)) < 0.3).astype(np.float32)
    B = (rng.random((n_test, width)) < 0.3).astype(np.float32)
    np.save(tmp_path / "X_num_train.npy", A)
    np.save(tmp_path / "X_num_test.npy", B)
    return A, B


def test_ehrdiff_npy_keeps_the_authors_split(tmp_path):
    A, B = _npy(tmp_path)
    d = load_dataset("ehrdiff_npy", path=str(tmp_path))
    np.testing.assert_array_equal(d.train, A)
    assert (len(d.holdout), len(d.test)) == (10, 10)
    rows = lambda M: sorted(map(tuple, M.tolist()))  # noqa: E731
    assert rows(np.vstack([d.holdout, d.test])) == rows(B)
    assert d.columns[0] == "F0000" and d.kinds == ("binary",) * 6 and "generic" in d.meta["column_names"]
    pooled = load_dataset("ehrdiff_npy", path=str(tmp_path), keep_authors_split=False, split=[0.5, 0.25, 0.25])
    assert (len(pooled.train), len(pooled.holdout), len(pooled.test)) == (30, 15, 15)


def test_ehrdiff_npy_column_names(tmp_path):
    _npy(tmp_path)
    (tmp_path / "diag_icd_data_by_patients.json").write_text(json.dumps({"1": ["428", "038"], "2": ["V10", "428"]}))
    (tmp_path / "proc_icd_data_by_patients.json").write_text(json.dumps({"1": [["396"], ["001"]], "2": ["016"]}))
    d = load_dataset("ehrdiff_npy", path=str(tmp_path))
    assert d.columns == ("D_038", "D_428", "D_V10", "P_001", "P_016", "P_396") and "unverified" in d.meta["column_names"]
    (tmp_path / "names.txt").write_text("\n".join(f"c{j}" for j in range(6)))
    assert load_dataset("ehrdiff_npy", path=str(tmp_path), columns_file=str(tmp_path / "names.txt")).columns[5] == "c5"


def test_ehrdiff_npy_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="sczzz3/EHRDiff"):
        load_dataset("ehrdiff_npy", path=str(tmp_path))
    A, B = _npy(tmp_path)
    B[3, 2] = 0.7
    np.save(tmp_path / "X_num_test.npy", B)
    with pytest.raises(ValueError, match=r"X_num_test\.npy: non-binary value 0.7 in row 3, column F0002"):
        load_dataset("ehrdiff_npy", path=str(tmp_path))
    assert load_dataset("ehrdiff_npy", path=str(tmp_path), kind="continuous").kinds[0] == "continuous"
    B[3, 2] = np.nan
    np.save(tmp_path / "X_num_test.npy", B)
    with pytest.raises(ValueError, match="non-finite value in row 3, column 2"):
        load_dataset("ehrdiff_npy", path=str(tmp_path))
    np.save(tmp_path / "X_num_test.npy", np.nan_to_num(B[:, :4]))
    with pytest.raises(ValueError, match="4 columns, but X_num_train.npy has 6"):
        load_dataset("ehrdiff_npy", path=str(tmp_path))
