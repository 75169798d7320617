"""Registry-driven checks over every metric: direction (copy vs noise), determinism, bad input, constant columns, configs."""
import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from ehrbench.data import from_matrix, load_dataset
from ehrbench.data.synthetic import simulate
from ehrbench.metrics import METRICS, evaluate

CONFIGS = Path(__file__).resolve().parents[1] / "benchmarks" / "metrics"
# Same definitions as default.yaml, sized for a 1,200-row train split in seconds.
SMALL = {"detection_auc": {"n_estimators": 20}, "detection": {"n_estimators": 20}, "tstr_auroc": {"n_estimators": 20}, "trtr_auroc": {"n_estimators": 20},
         "dimwise_prediction": {"top_k": 10}, "attribute_inference_f1": {"known": 20}}


# Registered for older runs and other configs, left out of default.yaml (its successor is there); still tested.
NOT_DEFAULT = {"detection_auc": "detection"}


def spec():
    """default.yaml plus every registered metric it leaves out, at its successor's options (SMALL sizes)."""
    base = yaml.safe_load((CONFIGS / "default.yaml").read_text())
    base.update({old: base[new] for old, new in NOT_DEFAULT.items()})
    return {k: {**(v or {}), **SMALL.get(k, {})} for k, v in base.items()}


@pytest.fixture(scope="module")
def mixed():
    """Simulator codes + demographics + MORTALITY label + two continuous labs (so every metric applies)."""
    X, cols, _ = simulate(2000, 40, seed=5)
    rng = np.random.default_rng(5)
    y = X[:, -1]
    labs = np.c_[rng.normal(90 + 15 * y, 12), rng.lognormal(0.5 + 0.4 * X[:, :5].sum(1) / 5, 0.3)].astype(np.float32)
    names = cols[:-1] + ["RARE", "HR", "LACTATE", "MORTALITY"]
    kinds = ["binary"] * len(cols) + ["continuous"] * 2 + ["binary"]
    for r in range(len(X)):  # RARE: one patient outside train has it, so nzc can tell invented codes apart
        rare = np.zeros(len(X), np.float32)
        rare[r] = 1
        M = np.c_[X[:, :-1], rare, labs, y]
        data = from_matrix(M, names, kinds, name="mixed", label_columns=["MORTALITY"], split=(0.6, 0.2, 0.2))
        if data.train[:, data.index("RARE")].max() == 0:
            return data


def noise_like(data, seed=1):
    """Independent noise: binary cells Bernoulli(0.5), continuous columns normal with the real mean and std
    (in range, so distance-based scores are not all decided by one extreme real record)."""
    rng = np.random.default_rng(seed)
    N = (rng.random(data.train.shape) < 0.5).astype(np.float32)
    cont = ~data.binary_mask
    N[:, cont] = rng.normal(data.train[:, cont].mean(0), data.train[:, cont].std(0), size=(len(N), cont.sum()))
    return N


def values(rows):
    return {r["metric"]: r["value"] for r in rows}


@pytest.fixture(scope="module")
def scored(mixed):
    return {name: evaluate(mixed, S, spec(), seed=0)
            for name, S in (("copy", mixed.train.copy()), ("noise", noise_like(mixed)))}


def test_default_config_lists_every_metric():
    default = set(yaml.safe_load((CONFIGS / "default.yaml").read_text()))
    assert default | set(NOT_DEFAULT) == set(METRICS) and set(NOT_DEFAULT.values()) <= default


def test_every_metric_runs_on_mixed_data(scored):
    bad = [(r["metric"], r["status"]) for rows in scored.values() for r in rows if r["status"] != "ok"]
    assert not bad


def badness(name, rows):
    """How far a metric's value is from good, by its registered goal and ideal (what the reports rank by)."""
    spec, row = METRICS[name], next(r for r in rows if r["metric"] == name)
    v = row["value"]
    if spec.goal == "target":
        return abs(v - row["ideal"])
    if spec.ideal is not None:
        return max(0.0, (v - row["ideal"]) if spec.goal == "min" else (row["ideal"] - v))
    return -v if spec.goal == "max" else v


@pytest.mark.parametrize("name", sorted(n for n in METRICS if METRICS[n].goal != "info"))
def test_copy_beats_noise_in_goal_direction(scored, name):
    """Fidelity/utility: a copy of the real data beats independent noise. Privacy: the copy is the worst case,
    so independent noise (which reveals nothing about members) must score better. Strict for every metric,
    judged by the registered goal and ideal (flipping a goal makes this fail)."""
    family = METRICS[name].family
    copy, noise = badness(name, scored["copy"]), badness(name, scored["noise"])
    good, bad = (noise, copy) if family == "privacy" else (copy, noise)
    assert good < bad, f"{name}: good={good} bad={bad}"


def test_trtr_is_the_tstr_of_a_copy_of_train(mixed, scored):
    """trtr_auroc (goal info) must equal tstr_auroc on synthetic data = the real train split, and must not move
    when the synthetic data changes."""
    assert METRICS["trtr_auroc"].goal == "info"
    copy, noise = values(scored["copy"]), values(scored["noise"])
    assert copy["trtr_auroc"] == copy["tstr_auroc"] == copy["tstr_auroc.trtr"]
    assert noise["trtr_auroc"] == copy["trtr_auroc"] != noise["tstr_auroc"]


# Metrics whose value is a function of the data alone (no subsample, no random tie-breaking, no CV shuffle).
DETERMINISTIC = {"prevalence_pearson", "prevalence_spearman", "prevalence_mae", "nzc", "cooccurrence_pearson", "cmd",
                 "correlation_mae", "codes_per_record_wd", "continuous_mean_error", "continuous_std_error",
                 "continuous_wd", "exact_copy_rate", "tstr_auroc", "trtr_auroc"}
SUBSAMPLE = {"mmd": {"n": 400}, "precision": {"n": 400}, "recall": {"n": 400}, "coverage": {"n": 400}, "mia_auc": {"n": 150},
             "dcr": {"n": 300}, "nnaa": {"n": 150}, "attribute_inference_f1": {"n": 150},
             "dimwise_prediction": {"n_train": 500}, "detection_auc": {"n": 600},
             "detection": {"n": 600}}


def test_seeds_make_every_metric_deterministic(mixed, scored):
    again = values(evaluate(mixed, mixed.train.copy(), spec(), seed=0))
    first = values(scored["copy"])
    assert again.keys() == first.keys()
    assert all(first[k] == again[k] or (math.isnan(first[k]) and math.isnan(again[k])) for k in first)


def test_the_seed_reaches_every_stochastic_metric(mixed):
    """Two seeds must give two values for every metric that subsamples or shuffles (sizes below the data so
    each one does): a metric that ignored its seed would fail here. The others are listed as deterministic."""
    assert DETERMINISTIC | set(SUBSAMPLE) == set(METRICS)
    sp = {k: {**v, **SUBSAMPLE.get(k, {})} for k, v in spec().items() if k in SUBSAMPLE}
    S = noise_like(mixed, seed=4)
    a, b = values(evaluate(mixed, S, sp, seed=0)), values(evaluate(mixed, S, sp, seed=1))
    same = [k for k in SUBSAMPLE if a[k] == b[k]]
    assert not same, same


def _statuses(rows):
    return {r["metric"]: r["status"] for r in rows if "." not in r["metric"]}


@pytest.mark.parametrize("case,reason", [("nan", "non-finite value in row 3"), ("width", "has 47 columns"),
                                         ("nonbinary", "non-binary value 0.5 in binary column D_02")])
def test_bad_input_gives_error_rows_while_trtr_still_runs(mixed, case, reason):
    S = mixed.train[:300].copy()
    if case == "nan":
        S[3, 5] = np.nan
    elif case == "width":
        S = S[:, :-1]
    else:
        S[7, 2] = 0.5
    st = _statuses(evaluate(mixed, S, spec(), seed=0))
    assert st.pop("trtr_auroc") == "ok"  # does not read the synthetic data
    assert all(s.startswith("error: ValueError") and reason in s and "\n" not in s for s in st.values()), st


def test_too_few_rows_fail_only_where_needed(mixed):
    st = _statuses(evaluate(mixed, mixed.train[:3], spec(), seed=0))
    assert "needs at least 4" in st["precision"] and "needs at least 4" in st["recall"]
    assert st["prevalence_pearson"] == "ok" and st["mia_auc"] == "ok" and st["exact_copy_rate"] == "ok"


def test_constant_columns_are_valid_input(mixed):
    S = noise_like(mixed, seed=2)[:600]
    S[:, 0] = 0  # a code never generated (mode collapse)
    S[:, 1] = 1  # a code always generated
    S[:, mixed.index("HR")] = 80.0  # a constant continuous column
    rows = evaluate(mixed, S, spec(), seed=0)
    assert all(r["status"] == "ok" and math.isfinite(r["value"]) for r in rows), [r for r in rows if r["status"] != "ok"]
    # the documented rule: constant columns correlate 0 with the others (numpy, independently)
    X = np.c_[mixed.train].astype(np.float64)
    def corr(A):
        A = A.astype(np.float64)
        live = A.std(0) > 0
        R = np.zeros((A.shape[1],) * 2)
        R[np.ix_(live, live)] = np.corrcoef(A[:, live], rowvar=False)
        np.fill_diagonal(R, 1.0)
        return R
    Rr, Rs = corr(X), corr(S)
    assert values(rows)["cmd"] == pytest.approx(1 - (Rr * Rs).sum() / (np.linalg.norm(Rr) * np.linalg.norm(Rs)), abs=1e-12)
    S[:, mixed.index("MORTALITY")] = 0
    st = _statuses(evaluate(mixed, S, {"tstr_auroc": {"n_estimators": 5}, "dimwise_prediction": {"top_k": 5}}, seed=0))
    assert "synthetic label column MORTALITY is constant" in st["tstr_auroc"] and st["dimwise_prediction"] == "ok"


def test_binary_only_data_errors_only_the_continuous_metrics():
    data = load_dataset("synthetic", n_patients=600, n_codes=30, seed=1)
    st = _statuses(evaluate(data, data.train, spec(), seed=0))
    cont = {k for k in st if k.startswith("continuous_")}
    assert cont == {"continuous_mean_error", "continuous_std_error", "continuous_wd"}
    assert all("has no continuous columns" in st[k] for k in cont)
    assert all(st[k] == "ok" for k in set(st) - cont)


def test_fast_config_scores_every_metric_on_small_data():
    """Its speed goal (under 5 s on 2,000 x 60 data) is measured by benchmarks/bench_metrics.py
    --metrics benchmarks/metrics/fast.yaml, not asserted here."""
    data = load_dataset("synthetic", n_patients=2000, n_codes=55)
    assert data.n_features == 60
    fast = yaml.safe_load((CONFIGS / "fast.yaml").read_text())
    rows = evaluate(data, data.train[::-1].copy(), fast, seed=0)
    assert all(r["status"] == "ok" for r in rows)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_metric_configs_name_registered_metrics_and_valid_kwargs(path):
    for name, kwargs in yaml.safe_load(path.read_text()).items():
        assert name in METRICS, f"{path.name}: unknown metric {name}"
        params = inspect.signature(METRICS[name].fn).parameters
        assert set(kwargs or {}) <= set(params) - {"data", "synth", "seed"}, f"{path.name}: {name} {kwargs}"


def test_not_applicable_metric_is_a_visible_na_row():
    from ehrbench.data import load_dataset
    from ehrbench.metrics import evaluate

    d = load_dataset("synthetic", n_patients=200, n_codes=20)
    rows = {r["metric"]: r for r in evaluate(d, d.train, ["continuous_wd", "prevalence_mae"])}
    assert rows["continuous_wd"]["status"].startswith("n/a: the dataset synthetic has no continuous columns")
    assert rows["prevalence_mae"]["status"] == "ok"


def test_register_metric_rejects_unknown_goal_and_accepts_info(mixed):
    from ehrbench.metrics.registry import register_metric

    with pytest.raises(ValueError, match="goal must be one of max, min, target, info; got 'best'"):
        register_metric("x_unknown_goal", goal="best", family="utility")
    with pytest.raises(ValueError, match="goal 'target' needs an ideal value"):
        register_metric("x_target", goal="target", family="utility")
    assert METRICS["trtr_auroc"].goal == "info" and METRICS["trtr_auroc"].version == 3
    row = next(r for r in evaluate(mixed, mixed.train, {"trtr_auroc": {"n_estimators": 20}}) if r["metric"] == "trtr_auroc")
    assert (row["goal"], row["metric_version"], row["status"]) == ("info", 3, "ok") and "ideal" not in row


def test_rows_record_the_ideal(mixed):
    rows = {r["metric"]: r for r in evaluate(mixed, mixed.train, ["nzc", "nnaa", "cmd"])}
    p = mixed.train[:, mixed.binary_mask].mean(0, dtype=np.float64)
    expected = float((1 - (1 - p) ** len(mixed.train)).sum())  # the count expected of as many records
    assert rows["nzc"]["ideal"] == rows["nzc.real"]["value"] == pytest.approx(expected)
    assert rows["nnaa"]["ideal"] == 0.0 and "ideal" not in rows["cmd"] and "ideal" not in rows["nzc.real"]
