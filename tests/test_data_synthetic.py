"""The built-in simulator and the EHRData container: realistic shape, determinism, splits, bad input."""
import numpy as np
import pytest

from ehrbench.data import DATASETS, EHRData, load_dataset, split_indices


def test_simulator_looks_like_diagnosis_data():
    d = load_dataset("synthetic", n_patients=5000, n_codes=500, seed=0)
    codes = np.vstack([d.train, d.holdout, d.test])[:, :500]
    prev = codes.mean(0)
    assert 1 <= (prev > 0.10).sum() <= 30 and prev.max() <= 0.45      # a few common codes
    assert (prev < 0.01).mean() > 0.5                                  # most codes rare
    assert 4 <= codes.sum(1).mean() <= 16                              # ~5-15 codes per patient
    C = np.corrcoef(codes[:, prev > 0.02].T)
    assert np.nanmax(C[np.triu_indices_from(C, 1)]) > 0.3              # comorbidity structure
    mort = np.vstack([d.train, d.holdout, d.test])[:, d.index("MORTALITY")]
    assert 0.03 < mort.mean() < 0.3
    ages = np.vstack([d.train, d.holdout, d.test])[:, [d.index(c) for c in ("AGE_18_44", "AGE_45_64", "AGE_65_PLUS")]]
    assert np.all(ages.sum(1) == 1)
    assert d.label_columns == ("MORTALITY",) and set(d.kinds) == {"binary"}


def test_simulator_outcome_depends_on_codes():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    d = load_dataset("synthetic", n_patients=4000, n_codes=200, seed=1)
    y = d.index("MORTALITY")
    m = LogisticRegression(max_iter=300).fit(np.delete(d.train, y, 1), d.train[:, y])
    assert roc_auc_score(d.test[:, y], m.predict_proba(np.delete(d.test, y, 1))[:, 1]) > 0.7


def test_simulator_is_deterministic_and_split_by_patient():
    a = load_dataset("synthetic", n_patients=1000, n_codes=50, seed=7)
    b = load_dataset("synthetic", n_patients=1000, n_codes=50, seed=7)
    c = load_dataset("synthetic", n_patients=1000, n_codes=50, seed=8)
    assert np.array_equal(a.train, b.train) and not np.array_equal(a.train, c.train)
    assert (len(a.train), len(a.holdout), len(a.test)) == (800, 100, 100)
    tr, ho, te = split_indices(1000, (0.8, 0.1, 0.1), 0)
    assert len(set(tr) | set(ho) | set(te)) == 1000


def test_split_rejects_bad_fractions():
    with pytest.raises(ValueError, match="three non-negative fractions"):
        split_indices(10, (0.5, 0.1, 0.1))


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(KeyError, match="valid choices: .*synthetic"):
        load_dataset("nope")
    assert "synthetic" in DATASETS


@pytest.mark.parametrize("bad, message", [
    (np.array([[0.0, 2.0]]), "non-binary value 2.0 in row 0, b"),
    (np.array([[0.0, np.nan]]), "non-finite value nan in row 0, b"),
])
def test_ehrdata_rejects_bad_values(bad, message):
    ok = np.zeros((2, 2))
    with pytest.raises(ValueError, match=message):
        EHRData(bad, ok, ok, ("a", "b"), ("binary", "binary"), name="t")


def test_ehrdata_rejects_bad_structure():
    ok = np.zeros((2, 2))
    with pytest.raises(ValueError, match="duplicated column name 'a'"):
        EHRData(ok, ok, ok, ("a", "a"), ("binary", "binary"))
    with pytest.raises(ValueError, match="unknown column kind 'count'; valid choices: binary, continuous"):
        EHRData(ok, ok, ok, ("a", "b"), ("binary", "count"))
    with pytest.raises(ValueError, match="expected 2 feature columns, got 3"):
        EHRData(np.zeros((2, 3)), ok, ok, ("a", "b"), ("binary", "binary"))
    with pytest.raises(ValueError, match="label column 'y' is not among the columns"):
        EHRData(ok, ok, ok, ("a", "b"), ("binary", "binary"), label_columns=("y",))
