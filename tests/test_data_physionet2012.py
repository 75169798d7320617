"""physionet2012 loader: exact features on records written in the challenge format, cleaning rules, bad input, real sets."""
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ehrbench.data import load_dataset
from ehrbench.data.physionet2012 import to_clinical_units
from test_data_mimic3 import in_file_order

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "physionet2012"
REC1 = """Time,Parameter,Value
00:00,RecordID,140001
00:00,Age,54
00:00,Gender,0
00:00,Height,-1
00:00,ICUType,4
00:00,Weight,70
00:07,HR,73
00:07,HR,77
00:37,HR,0
01:37,HR,60
01:37,pH,735
02:00,pH,7.35
02:00,Foo,3
02:10,,5
03:00,Temp,
48:30,HR,200
05:00,MechVent,1
"""
REC2 = """Time,Parameter,Value
00:00,RecordID,140002
00:00,Age,76
00:00,Gender,1
00:00,Height,175.3
00:00,ICUType,2
00:00,Weight,-1
00:31,HR,88
03:31,HR,92
04:00,Weight,80.5
"""
REC3 = """Time,Parameter,Value
00:00,RecordID,140003
00:00,Age,60
00:00,Gender,-1
00:00,Height,160
00:00,ICUType,1
00:10,HR,100
00:20,pH,7.2
"""
OUT_A = "RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n140001,6,1,5,-1,1\n140002,16,8,8,-1,0\n"
OUT_B = "RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n140003,7,1,9,575,0\n140009,7,1,9,575,0\n"


def write_set(folder: Path, s: str, records: dict[str, str], outcomes: str) -> None:
    with tarfile.open(folder / f"set-{s}.tar.gz", "w:gz") as tf:
        for rid, text in records.items():
            data = text.encode()
            info = tarfile.TarInfo(f"set-{s}/{rid}.txt")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    (folder / f"Outcomes-{s}.txt").write_text(outcomes)


@pytest.fixture
def cinc(tmp_path):
    write_set(tmp_path, "a", {"140001": REC1, "140002": REC2}, OUT_A)
    write_set(tmp_path, "b", {"140003": REC3}, OUT_B)
    return tmp_path


STATS = ["first", "last", "min", "max", "mean"]
EXPECTED = {  # clinical units, records 140001, 140002, 140003; NaN cells take the train median (SEX_M: mode)
    "HR": [[75, 60, 60, 75, 67.5], [88, 92, 88, 92, 90], [100] * 5],     # 73/77 at 00:07 averaged; 0 and 48:30 dropped
    "pH": [[7.35] * 5, [7.275] * 5, [7.2] * 5],                           # 735 impossible
    "Weight": [[70] * 5, [80.5] * 5, [75.25] * 5],                        # -1 impossible
    "AGE": [54, 76, 60], "HEIGHT": [167.65, 175.3, 160], "SEX_M": [0, 1, 0],
    "ICU_CORONARY": [0, 0, 1], "ICU_CARDIAC_SURGERY": [0, 1, 0], "ICU_MEDICAL": [0, 0, 0], "ICU_SURGICAL": [1, 0, 0],
    "MECHVENT": [1, 0, 0], "IN_HOSPITAL_DEATH": [1, 0, 0],
}


def test_exact_features_and_cleaning_counts(cinc):
    d = load_dataset("physionet2012", path=str(cinc), stats=STATS, split=[1, 0, 0])
    ts = [f"{v}_{s}" for v in ("HR", "pH", "Weight") for s in STATS]
    assert d.columns == (*ts, "AGE", "HEIGHT", "SEX_M", "ICU_CORONARY", "ICU_CARDIAC_SURGERY", "ICU_MEDICAL",
                         "ICU_SURGICAL", "MECHVENT", "IN_HOSPITAL_DEATH")
    assert d.kinds == ("continuous",) * 17 + ("binary",) * 7 and d.label_columns == ("IN_HOSPITAL_DEATH",)
    Z = in_file_order(d)
    assert Z.min() >= 0 and Z.max() <= 1
    X = to_clinical_units(Z, d)
    expected = np.concatenate([np.array(EXPECTED[v], float) for v in ("HR", "pH", "Weight")] +
                              [np.array(EXPECTED[c], float)[:, None] for c in d.columns[15:]], axis=1)
    np.testing.assert_allclose(X, expected, rtol=1e-5)
    c = d.meta["counts"]
    assert c["rows_impossible_value"] == {"Gender": 1, "HR": 1, "Height": 1, "Weight": 1, "pH": 1}
    assert c["rows_unknown_parameter"] == {"Foo": 1} and c["rows_empty_parameter"] == 1
    assert c["rows_missing_or_non_numeric_value"] == 1 and c["rows_after_hours"] == 1
    assert c["rows_duplicate_timestamp"] == {"HR": 2}
    assert d.meta["sets"]["b"] == {"records": 1, "deaths": 0, "outcome_rows_without_record": 1}
    assert "Temp_min" in d.meta["dropped_columns"]["never measured in any record"]
    assert d.meta["imputation"]["pH_mean"] == pytest.approx(7.275) and c["cells_imputed"]["SEX_M"] == 1
    assert set(d.meta["sha256"]) == {"set-a.tar.gz", "set-b.tar.gz", "Outcomes-a.txt", "Outcomes-b.txt"}


def test_scaling_is_fitted_on_train_only(cinc):
    d = load_dataset("physionet2012", path=str(cinc), stats=["mean"], split=[2 / 3, 0, 1 / 3], split_seed=1)
    lo, hi = d.meta["scaling"]["HR_mean"]
    train_hr = to_clinical_units(d.train, d)[:, d.index("HR_mean")]
    assert lo == train_hr.min() and hi == train_hr.max()
    assert np.all((d.test >= 0) & (d.test <= 1))


def test_extracted_folder_and_missing_indicators(cinc):
    (cinc / "set-a.tar.gz").unlink()
    (cinc / "set-a").mkdir()
    (cinc / "set-a" / "140001.txt").write_text(REC1)
    (cinc / "set-a" / "140002.txt").write_text(REC2)
    d = load_dataset("physionet2012", path=str(cinc), sets=["a"], missing_indicators=True, split=[1, 0, 0])
    X = in_file_order(d)
    assert X[:, d.index("pH_OBSERVED")].tolist() == [1, 0] and X[:, d.index("Temp_OBSERVED")].tolist() == [0, 0]


def test_bad_input_messages(cinc, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"physionet\.org"):
        load_dataset("physionet2012", path=str(tmp_path / "none"))
    with pytest.raises(ValueError, match="valid choices: first, last, min, max, mean"):
        load_dataset("physionet2012", path=str(cinc), stats=["median"])
    cases = [
        ({"140001": REC1.replace("Time,Parameter,Value", "T,P,V")}, OUT_A, "140001.txt: first line"),
        ({"140001": REC1.replace("00:07,HR,73", "00:07,HR,73,5")}, OUT_A, r"140001\.txt: malformed row at line 8"),
        ({"140002": REC2.replace("03:31,HR", "3x:31,HR")}, OUT_A, r"140002\.txt: malformed time 3x:31 at line 9"),
        ({"140001": REC1, "140004": REC2.replace("140002", "140004")}, OUT_A, "no outcome row for record 140004"),
        ({"140001": REC1, "140002": REC1}, OUT_A, "140002.txt holds RecordID 140001"),
        ({"140001": REC1}, OUT_A + "140001,1,1,1,1,0\n", "duplicated patient RecordID 140001"),
        ({"140001": REC1}, OUT_A.replace("-1,1", "-1,yes"), "expected an integer id and 0 or 1"),
    ]
    for records, outcomes, message in cases:
        write_set(cinc, "a", records, outcomes)
        with pytest.raises(ValueError, match=message):
            load_dataset("physionet2012", path=str(cinc), sets=["a"])
    write_set(cinc, "a", {"140003": REC3}, OUT_B)
    with pytest.raises(ValueError, match="duplicated patient RecordID 140003 across"):
        load_dataset("physionet2012", path=str(cinc))
    (cinc / "Outcomes-b.txt").unlink()
    with pytest.raises(FileNotFoundError, match="Outcomes-b.txt not found"):
        load_dataset("physionet2012", path=str(cinc))


@pytest.mark.skipif(not (REAL / "set-a.tar.gz").is_file(), reason="real PhysioNet 2012 sets not present")
def test_real_sets():
    d = load_dataset("physionet2012", path=str(REAL))
    assert d.meta["sets"]["a"]["records"] == 4000 and d.meta["sets"]["a"]["deaths"] == 554
    assert d.meta["sets"]["b"]["records"] == 4000 and d.meta["sets"]["b"]["deaths"] == 568
    X = np.vstack([d.train, d.holdout, d.test])
    assert X.shape == (8000, 117) and X[:, -1].sum() == 554 + 568
    assert X.min() >= 0 and X.max() <= 1 and d.kinds.count("continuous") == 110
    assert d.meta["counts"]["rows_impossible_value"]["Height"] > 0   # -1 descriptors are counted, not silently kept
