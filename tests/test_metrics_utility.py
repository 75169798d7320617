"""Utility metrics against independent sklearn/LightGBM computations; label and constant-column rules."""
import lightgbm
import numpy as np
import pytest
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from ehrbench.data import load_dataset
from ehrbench.metrics import METRICS
from ehrbench.metrics.learners import auroc_columns


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", n_patients=1500, n_codes=30, seed=2, split=(0.6, 0.2, 0.2))


@pytest.fixture(scope="module")
def synth(data):
    rng = np.random.default_rng(0)
    S = data.train[rng.integers(0, len(data.train), 600)].copy()
    flip = rng.random(S.shape) < 0.03
    S[flip] = 1 - S[flip]
    return S


def _lgbm_auc(train, test, j, feats):
    clf = lightgbm.LGBMClassifier(n_estimators=20, random_state=0, deterministic=True, force_row_wise=True,
                                  verbose=-1, n_jobs=1).fit(train[:, feats], train[:, j])
    return roc_auc_score(test[:, j], clf.predict_proba(test[:, feats])[:, 1])


def test_auroc_columns_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    Y = rng.random((200, 4)) < 0.3
    P = rng.integers(0, 5, (200, 4)).astype(float)  # many ties
    assert np.allclose(auroc_columns(Y, P), [roc_auc_score(Y[:, k], P[:, k]) for k in range(4)])
    assert np.isnan(auroc_columns(np.zeros((5, 1)), np.arange(5.0)[:, None])[0])


def test_tstr_and_trtr_match_direct_lightgbm(data, synth):
    j = data.index("MORTALITY")
    feats = [i for i in range(data.n_features) if i != j]
    out = METRICS["tstr_auroc"].fn(data, synth, seed=0, n_estimators=20)
    tstr, trtr = _lgbm_auc(synth, data.test, j, feats), _lgbm_auc(data.train, data.test, j, feats)
    assert out["value"] == pytest.approx(tstr, abs=1e-9)
    assert out["trtr"] == pytest.approx(trtr, abs=1e-9) and out["gap"] == pytest.approx(trtr - tstr, abs=1e-9)
    assert METRICS["trtr_auroc"].fn(data, synth, seed=0, n_estimators=20) == pytest.approx(trtr, abs=1e-9)


@pytest.mark.parametrize("other", ["D_05", "D_12", "SEX_F"])
def test_tstr_label_override_never_uses_the_label_as_a_feature(data, synth, other):
    """label= an ordinary column that other columns do not determine: version 1 kept it among the features and
    scored AUROC 1.000. The independent computation drops it (and the dataset's label columns)."""
    j = data.index(other)
    feats = [i for i in range(data.n_features) if i not in (j, data.index("MORTALITY"))]
    out = METRICS["tstr_auroc"].fn(data, synth, seed=0, label=other, n_estimators=20)
    expected = _lgbm_auc(synth, data.test, j, feats)
    assert out["value"] == pytest.approx(expected, abs=1e-9) and expected < 0.95
    trtr = METRICS["trtr_auroc"].fn(data, synth, seed=0, label=other, n_estimators=20)
    assert trtr == pytest.approx(_lgbm_auc(data.train, data.test, j, feats), abs=1e-9) and trtr < 0.95


def test_tstr_label_errors(data, synth):
    S = synth.copy()
    S[:, data.index("MORTALITY")] = 0
    with pytest.raises(ValueError, match="synthetic label column MORTALITY is constant"):
        METRICS["tstr_auroc"].fn(data, S, seed=0)
    with pytest.raises(KeyError, match="no column 'NOPE'"):
        METRICS["tstr_auroc"].fn(data, synth, seed=0, label="NOPE")


def test_dimwise_prediction_matches_sklearn_logistic_regression(data, synth):
    K = 4
    out = METRICS["dimwise_prediction"].fn(data, synth, seed=0, top_k=K, n_train=None)
    feats = [i for i, c in enumerate(data.columns) if c != "MORTALITY"]
    codes = feats  # every non-label column is binary here
    prev = data.train[:, codes].mean(0)
    targets = [codes[i] for i in np.argsort(-prev, kind="stable")[:K]]
    per = {}
    for side, X in (("syn", synth), ("real", data.train)):
        aucs = []
        for t in targets:
            f = [i for i in feats if i != t]
            lr = LogisticRegression(C=1.0, max_iter=1000, tol=1e-8).fit(X[:, f], X[:, t])
            aucs.append(roc_auc_score(data.test[:, t], lr.decision_function(data.test[:, f])))
        per[side] = np.array(aucs)
    assert out["value"] == pytest.approx(per["syn"].mean(), abs=5e-3)
    assert out["real"] == pytest.approx(per["real"].mean(), abs=5e-3)
    assert out["pearson"] == pytest.approx(stats.pearsonr(per["syn"], per["real"])[0], abs=0.05)
    assert out["n_codes"] == K


def test_dimwise_constant_synthetic_code_scores_half(data, synth):
    codes = [i for i, c in enumerate(data.columns) if c != "MORTALITY"]
    top = codes[int(np.argmax(data.train[:, codes].mean(0)))]  # the code dimwise_prediction picks for top_k=1
    S = synth.copy()
    S[:, top] = 0
    a = METRICS["dimwise_prediction"].fn(data, S, seed=0, top_k=1, n_train=None)
    b = METRICS["dimwise_prediction"].fn(data, synth, seed=0, top_k=1, n_train=None)
    assert a["value"] == 0.5 and b["value"] != 0.5 and a["real"] == b["real"]
