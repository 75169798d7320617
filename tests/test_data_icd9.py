"""ICD truncation (the medGAN/EHRDiff rule) and the download/cache helpers of data/cache.py."""
import hashlib
import zipfile

import pandas as pd
import pytest

from ehrbench.data.cache import atomic_path, ensure_cached, extract_member, fetch, read_csv_strict, sha256_file
from ehrbench.data.icd9 import bad_code_message, truncate_icd10, truncate_icd9

# (input, MIMIC style, UCI zero-padded style); None = unknown format
DIAG_CASES = [
    ("E8782", "E878", "E878"), ("V1046", "V10", "V10"), ("0389", "038", "038"), ("4280", "428", "428"),
    ("V10", "V10", "V10"), ("E878", "E878", "E878"), ("038", "038", "038"), ("42831", "428", "428"),
    ("428.0", "428", "428"), ("250.83", "250", "250"), ("E878.2", "E878", "E878"), ("v10.46", "V10", "V10"),
    (" 0389 ", "038", "038"), ("8", None, "008"), ("38", None, "038"), ("V3", None, "V03"), ("?", None, None),
    ("ABC", None, None), ("E87", None, "E087"), ("123456", None, None), ("V12345", None, None),
]


@pytest.mark.parametrize("code,plain,padded", DIAG_CASES)
def test_diagnosis_truncation(code, plain, padded):
    s = pd.Series([code])
    got_plain = truncate_icd9(s).iloc[0]
    got_pad = truncate_icd9(s, zero_pad=True).iloc[0]
    assert (None if pd.isna(got_plain) else got_plain) == plain
    assert (None if pd.isna(got_pad) else got_pad) == padded


def test_medgan_rule_on_valid_plain_codes():
    """Independent statement of medGAN's convert_to_3digit_icd9 applied to every valid plain code."""
    codes = ["E8782", "E878", "E9500", "V1046", "V10", "V4501", "0389", "038", "99591", "4019"]
    ref = [c[:4] if c.startswith("E") and len(c) > 4 else c if c.startswith("E") else c[:3] for c in codes]
    assert truncate_icd9(pd.Series(codes)).tolist() == ref


def test_procedures_and_icd10():
    p = truncate_icd9(pd.Series(["3961", "016", "0016", "39.61", "01.6", "16", "9"]), "procedure")
    assert p.tolist()[:5] == ["396", "016", "001", "396", "016"] and p.iloc[5:].isna().all()
    d10 = truncate_icd10(pd.Series(["I5020", "I50.20", "Z87891", "02HV33Z", "12"]))
    assert d10.tolist()[:3] == ["I50", "I50", "Z87"] and d10.iloc[3:].isna().all()
    assert truncate_icd10(pd.Series(["02HV33Z", "I5020"]), "procedure").iloc[0] == "02H"
    with pytest.raises(ValueError, match="valid choices"):
        truncate_icd9(pd.Series(["1"]), "lab")


def test_bad_code_message_names_line_and_value():
    codes = pd.Series(["4280", None, "XYZ", "Q1"], index=[0, 1, 2, 3])
    msg = bad_code_message("f.csv column icd9_code", codes, truncate_icd9(codes), "diagnosis")
    assert "f.csv column icd9_code" in msg and "'XYZ'" in msg and "line 4" in msg and "2 such row" in msg
    assert bad_code_message("f", codes[:2], truncate_icd9(codes[:2]), "diagnosis") is None


def test_sha256_and_atomic_path(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 10_000_001)
    assert sha256_file(f) == hashlib.sha256(f.read_bytes()).hexdigest()
    dest = tmp_path / "out" / "c.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert not dest.exists() and list(dest.parent.iterdir()) == []
    with atomic_path(dest) as tmp:
        tmp.write_text("done")
    assert dest.read_text() == "done" and len(list(dest.parent.iterdir())) == 1


def test_ensure_cached_rebuilds_a_mismatching_cache(tmp_path):
    dest = tmp_path / "c.txt"
    good = hashlib.sha256(b"good").hexdigest()
    calls = []

    def build(tmp):
        calls.append(1)
        tmp.write_bytes(b"good")

    ensure_cached(dest, build, good)
    ensure_cached(dest, build, good)
    assert len(calls) == 1                       # reused while its sha256 matches
    dest.write_bytes(b"tampered")
    ensure_cached(dest, build, good)
    assert len(calls) == 2 and dest.read_bytes() == b"good"
    with pytest.raises(ValueError, match="does not match"):
        ensure_cached(tmp_path / "d.txt", build, "0" * 64)
    assert not (tmp_path / "d.txt").exists() and not list(tmp_path.glob(".d.txt*"))


def test_fetch_and_extract_over_http(tmp_path, local_http):
    base, served, _ = local_http
    src = served / "src.zip"
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("folder/diabetic_data.csv", "a,b\n1,2\n")
    zipped = fetch(f"{base}/src.zip", tmp_path / "cache" / "x.zip")
    assert zipped.read_bytes() == src.read_bytes()
    out = extract_member(zipped, "diabetic_data.csv", tmp_path / "cache" / "d.csv",
                         hashlib.sha256(b"a,b\n1,2\n").hexdigest())
    assert out.read_text() == "a,b\n1,2\n"
    with pytest.raises(OSError, match="could not download"):
        fetch(f"{base}/missing.zip", tmp_path / "cache" / "y.zip")
    assert not (tmp_path / "cache" / "y.zip").exists()


def test_read_csv_strict_errors(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("A,B,C\n1,2,3\n4,5,6,7\n")
    with pytest.raises(ValueError, match=r"t\.csv: malformed CSV row at line 3"):
        read_csv_strict(f, ["a", "b"])
    with pytest.raises(ValueError, match="missing required column 'zz'"):
        read_csv_strict(f, ["a", "zz"])
    f.write_text("A,a\n1,2\n")
    with pytest.raises(ValueError, match="appears twice"):
        read_csv_strict(f, ["a"])
    f.write_text("SUBJECT_ID,X\n1,2\n")
    assert read_csv_strict(f, ["subject_id"]).columns.tolist() == ["subject_id"]
