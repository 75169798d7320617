"""diabetes130 loader: exact matrix on a file in the UCI layout, download/cache, bad input, the real file if present."""
import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ehrbench.data import load_dataset
from ehrbench.data.diabetes130 import CSV_SHA256
from test_data_mimic3 import in_file_order

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "diabetes130"
HEADER = ("encounter_id,patient_nbr,race,gender,age,weight,admission_type_id,discharge_disposition_id,"
          "admission_source_id,time_in_hospital,payer_code,medical_specialty,num_lab_procedures,num_procedures,"
          "num_medications,number_outpatient,number_emergency,number_inpatient,diag_1,diag_2,diag_3,"
          "number_diagnoses,max_glu_serum,A1Cresult,metformin,repaglinide,nateglinide,chlorpropamide,glimepiride,"
          "acetohexamide,glipizide,glyburide,tolbutamide,pioglitazone,rosiglitazone,acarbose,miglitol,troglitazone,"
          "tolazamide,examide,citoglipton,insulin,glyburide-metformin,glipizide-metformin,"
          "glimepiride-pioglitazone,metformin-rosiglitazone,metformin-pioglitazone,change,diabetesMed,readmitted")
MEDS = ",".join(["No"] * 23)


def row(enc, pat, race, gender, age, d1, d2, d3, readmit):
    return (f"{enc},{pat},{race},{gender},{age},?,1,1,7,3,?,?,59,0,18,0,0,0,{d1},{d2},{d3},9,None,None,{MEDS},"
            f"No,Yes,{readmit}")


ROWS = [row(20, 7, "Caucasian", "Female", "[60-70)", "8", "250.83", "?", "NO"),
        row(35, 7, "Caucasian", "Female", "[70-80)", "V57", "E909", "428", "<30"),
        row(12, 3, "?", "Male", "[50-60)", "414", "?", "?", ">30"),
        row(40, 9, "Asian", "Unknown/Invalid", "[80-90)", "250.01", "38", "V3", "NO")]


def write(folder: Path, rows=ROWS, header=HEADER) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "diabetic_data.csv").write_text("\n".join([header, *rows]) + "\n")
    return folder / "diabetic_data.csv"


def test_exact_matrix(tmp_path):
    write(tmp_path)
    d = load_dataset("diabetes130", path=str(tmp_path), split=[1, 0, 0])
    assert d.columns == ("D_008", "D_038", "D_250", "D_414", "D_428", "D_E909", "D_V03", "D_V57", "READMIT_30")
    expected = [[0, 0, 0, 1, 0, 0, 0, 0, 0],     # patient 3: 414 ; readmitted >30
                [1, 0, 1, 0, 1, 1, 0, 1, 1],     # patient 7: 8, 250.83 | V57, E909, 428 ; <30 in one encounter
                [0, 1, 1, 0, 0, 0, 1, 0, 0]]     # patient 9: 250.01, 38, V3
    np.testing.assert_array_equal(in_file_order(d), expected)
    assert d.label_columns == ("READMIT_30",)
    c = d.meta["counts"]
    assert (c["encounters"], c["patients"], c["diagnosis_cells_missing"]) == (4, 3, 3)
    assert d.meta["matches_official_sha256"] is False


def test_demographics_from_first_encounter(tmp_path):
    write(tmp_path)
    d = load_dataset("diabetes130", path=str(tmp_path), demographics=True, split=[1, 0, 0])
    X = in_file_order(d)
    get = lambda name: X[:, d.index(name)].tolist()  # noqa: E731
    assert get("SEX_F") == [0, 1, 0] and get("AGE_60_70") == [0, 1, 0]   # patient 7's first encounter is id 20
    assert get("AGE_70_80") == [0, 0, 0] and get("RACE_CAUCASIAN") == [0, 1, 0] and get("RACE_ASIAN") == [0, 0, 1]
    assert d.meta["counts"]["race_unknown_patients"] == 1 and d.meta["counts"]["gender_unknown_patients"] == 1


def test_download_once_verify_and_rebuild(tmp_path, monkeypatch, local_http):
    base, served, seen = local_http
    csv = write(tmp_path / "src")
    sha = hashlib.sha256(csv.read_bytes()).hexdigest()
    archive = served / "uci.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(csv, "diabetic_data.csv")
    monkeypatch.setenv("EHRBENCH_CACHE", str(tmp_path / "cache"))
    kw = dict(path=str(tmp_path / "absent"), download=True, url=f"{base}/uci.zip", sha256=sha, split=[1, 0, 0])
    ref = in_file_order(load_dataset("diabetes130", **kw))
    assert seen == ["/uci.zip"]
    cached = tmp_path / "cache" / "diabetes130" / "diabetic_data.csv"
    assert cached.read_bytes() == csv.read_bytes()
    archive.unlink()                                   # second load: no network needed
    np.testing.assert_array_equal(in_file_order(load_dataset("diabetes130", **kw)), ref)
    cached.write_text("tampered")                      # a cache whose sha256 no longer matches is rebuilt
    np.testing.assert_array_equal(in_file_order(load_dataset("diabetes130", **kw)), ref)
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == sha
    cached.unlink()
    with pytest.raises(ValueError, match="does not match"):
        load_dataset("diabetes130", **{**kw, "sha256": "0" * 64})
    assert not cached.exists() and not list(cached.parent.glob(".*tmp"))


def test_bad_input_messages(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"archive\.ics\.uci\.edu.*download=true"):
        load_dataset("diabetes130", path=str(tmp_path / "none"))
    write(tmp_path, ROWS[:2] + [row(50, 4, "?", "Male", "[50-60)", "414", "QQ.1", "?", "NO")])
    with pytest.raises(ValueError, match=r"column diag_2: unknown code format 'QQ.1' at line 4"):
        load_dataset("diabetes130", path=str(tmp_path))
    write(tmp_path, ROWS[:2] + [row(50, 4, "?", "Male", "[50-60)", "414", "?", "?", "maybe")])
    with pytest.raises(ValueError, match="readmitted 'maybe' at line 4; expected one of NO, >30, <30"):
        load_dataset("diabetes130", path=str(tmp_path))
    write(tmp_path, ROWS[:2] + [ROWS[2] + ",extra"])
    with pytest.raises(ValueError, match="malformed CSV row at line 4"):
        load_dataset("diabetes130", path=str(tmp_path))
    write(tmp_path, ROWS[:2] + ["12,3,?,Male"])
    with pytest.raises(ValueError, match="empty value in column patient_nbr|empty value in column readmitted"):
        load_dataset("diabetes130", path=str(tmp_path))
    write(tmp_path, ROWS[:2] + [ROWS[0]])
    with pytest.raises(ValueError, match="duplicated encounter_id 20 at line 4"):
        load_dataset("diabetes130", path=str(tmp_path))
    write(tmp_path, ROWS, header=HEADER.replace("diag_3", "diag_x"))
    with pytest.raises(ValueError, match="missing required column 'diag_3'"):
        load_dataset("diabetes130", path=str(tmp_path))


@pytest.mark.skipif(not (REAL / "diabetic_data.csv").is_file(), reason="real Diabetes-130 file not present")
def test_real_file():
    d = load_dataset("diabetes130", path=str(REAL))  # speed: benchmarks/bench_data.py (no timing asserts in tests)
    X = np.vstack([d.train, d.holdout, d.test])
    assert X.shape == (71518, 882) and d.n_features - 1 == 881
    codes = X[:, :-1]
    assert abs(codes.sum(1).mean() - 3.672) < 0.01
    assert abs(X[:, -1].mean() - 0.1235) < 0.001          # 8,834 patients with a <30 readmission
    assert d.meta["sha256"]["diabetic_data.csv"] == CSV_SHA256 and d.meta["matches_official_sha256"]
    assert (len(d.train), len(d.holdout), len(d.test)) == (57214, 7152, 7152)
