"""mimic3 loader on small files written in the official MIMIC-III / MIMIC-IV layouts: exact matrices and bad input."""
import gzip

import numpy as np
import pytest

from ehrbench.data import load_dataset, split_indices

DIAG = '''"ROW_ID","SUBJECT_ID","HADM_ID","SEQ_NUM","ICD9_CODE"
1,10,100,1,"E8782"
2,10,100,2,"V1046"
3,10,101,1,"0389"
4,11,102,1,"0388"
5,11,102,2,"V10"
6,12,103,1,""
7,12,103,2,"4280"
8,13,104,1,""
'''
PROC = '''"ROW_ID","SUBJECT_ID","HADM_ID","SEQ_NUM","ICD9_CODE"
1,10,100,1,"3961"
2,11,102,1,"0016"
3,12,103,1,"016"
4,12,103,2,"3961"
'''
ADM = '''"ROW_ID","SUBJECT_ID","HADM_ID","HOSPITAL_EXPIRE_FLAG"
1,10,100,0
2,10,101,1
3,11,102,0
4,12,103,0
5,13,104,0
'''


def in_file_order(d, split=(1.0, 0.0, 0.0), seed=0):
    """Undo the patient split: rows back in the loader's order (sorted SUBJECT_ID)."""
    parts = split_indices(len(d.train) + len(d.holdout) + len(d.test), split, seed)
    X = np.empty((sum(map(len, parts)), d.n_features), np.float32)
    for idx, M in zip(parts, (d.train, d.holdout, d.test)):
        X[idx] = M
    return X


@pytest.fixture
def mimic(tmp_path):
    (tmp_path / "DIAGNOSES_ICD.csv").write_text(DIAG)
    with gzip.open(tmp_path / "PROCEDURES_ICD.csv.gz", "wt") as f:
        f.write(PROC)
    (tmp_path / "ADMISSIONS.csv").write_text(ADM)
    return tmp_path


def test_exact_matrix_with_procedures(mimic):
    d = load_dataset("mimic3", path=str(mimic), split=[1, 0, 0])
    assert d.columns == ("D_038", "D_428", "D_E878", "D_V10", "P_001", "P_016", "P_396")
    expected = np.array([[1, 0, 1, 1, 0, 0, 1],     # subject 10: E8782, V1046, 0389 | 3961
                         [1, 0, 0, 1, 1, 0, 0],     # subject 11: 0388, V10 | 0016
                         [0, 1, 0, 0, 0, 1, 1],     # subject 12: (empty), 4280 | 016, 3961
                         [0, 0, 0, 0, 0, 0, 0]])    # subject 13: only an empty code
    np.testing.assert_array_equal(in_file_order(d), expected)
    c = d.meta["counts"]
    assert c["patients"] == 4 and c["patients_without_codes"] == 1 and c["diagnosis_rows_missing_code"] == 2
    assert c["columns"] == {"D10_": 0, "D_": 4, "P10_": 0, "P_": 3}
    assert set(d.meta["sha256"]) == {"DIAGNOSES_ICD.csv", "PROCEDURES_ICD.csv.gz"} and d.kinds == ("binary",) * 7


def test_diagnoses_only_min_count_and_mortality(mimic):
    d = load_dataset("mimic3", path=str(mimic), procedures=False, min_count=2, mortality_label=True, split=[1, 0, 0])
    assert d.columns == ("D_038", "D_V10", "MORTALITY") and d.label_columns == ("MORTALITY",)
    np.testing.assert_array_equal(in_file_order(d), [[1, 1, 1], [1, 1, 0], [0, 0, 0], [0, 0, 0]])
    assert d.meta["counts"]["codes_dropped_min_count"] == 2


def test_default_split_is_by_patient(mimic):
    d = load_dataset("mimic3", path=str(mimic), procedures=False, split=[0.5, 0.25, 0.25], split_seed=3)
    assert (len(d.train), len(d.holdout), len(d.test)) == (2, 1, 1)
    assert d.meta["split"]["seed"] == 3


def test_mimic4_layout_icd9_kept_icd10_optional(tmp_path):
    (tmp_path / "hosp").mkdir()
    with gzip.open(tmp_path / "hosp" / "diagnoses_icd.csv.gz", "wt") as f:
        f.write("subject_id,hadm_id,seq_num,icd_code,icd_version\n"
                "1,11,1,4280,9\n1,11,2,I5020,10\n2,12,1,E8497,9\n2,12,2,I509,10\n3,13,1,Z87891,10\n")
    d = load_dataset("mimic3", path=str(tmp_path), procedures=False, split=[1, 0, 0])
    assert d.columns == ("D_428", "D_E849")
    np.testing.assert_array_equal(in_file_order(d), [[1, 0], [0, 1], [0, 0]])
    assert d.meta["counts"]["diagnosis_rows_icd10"] == 3
    d10 = load_dataset("mimic3", path=str(tmp_path), procedures=False, icd10="category", split=[1, 0, 0])
    assert d10.columns == ("D10_I50", "D10_Z87", "D_428", "D_E849")
    np.testing.assert_array_equal(in_file_order(d10), [[1, 0, 1, 0], [1, 0, 0, 1], [0, 1, 0, 0]])


def test_bad_input_messages(mimic, tmp_path):
    with pytest.raises(FileNotFoundError, match="credentialed"):
        load_dataset("mimic3", path=str(tmp_path / "nowhere"))
    (mimic / "PROCEDURES_ICD.csv.gz").unlink()
    with pytest.raises(FileNotFoundError, match="procedures=false"):
        load_dataset("mimic3", path=str(mimic))
    (mimic / "DIAGNOSES_ICD.csv").write_text(DIAG.replace('"0388"', '"BAD1"'))
    with pytest.raises(ValueError, match=r"DIAGNOSES_ICD\.csv column icd9_code: unknown code format 'BAD1' at line 5"):
        load_dataset("mimic3", path=str(mimic), procedures=False)
    d = load_dataset("mimic3", path=str(mimic), procedures=False, on_bad_code="drop")
    assert d.meta["counts"]["diagnosis_rows_bad_code_icd9"] == 1
    (mimic / "DIAGNOSES_ICD.csv").write_text(DIAG.replace('"ICD9_CODE"', '"CODE"'))
    with pytest.raises(ValueError, match="missing required column 'icd_code'"):
        load_dataset("mimic3", path=str(mimic), procedures=False)
    (mimic / "DIAGNOSES_ICD.csv").write_text(DIAG.replace('3,10,101,1,"0389"', '3,10,101,1,"0389",7'))
    with pytest.raises(ValueError, match="malformed CSV row at line 4"):
        load_dataset("mimic3", path=str(mimic), procedures=False)
    (mimic / "DIAGNOSES_ICD.csv").write_text(DIAG.replace("2,10,100", "2,x10,100"))
    with pytest.raises(ValueError, match="subject_id 'x10' at line 3"):
        load_dataset("mimic3", path=str(mimic), procedures=False)
    with pytest.raises(ValueError, match="valid choices: drop, category"):
        load_dataset("mimic3", path=str(mimic), icd10="map")
