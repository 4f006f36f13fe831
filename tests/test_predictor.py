"""GrokPredictor: the public API, its errors, the shipped coefficients and their signs, the
interval and the out-of-range check, bounded memory, the sign-constrained fit, and that it ranks
recorded grokkers above recorded memorizers (curves it was not fitted on)."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest

import grokschedule
from grokschedule.core.fitting import auroc, fit_logistic, fit_median, fit_ridge
from grokschedule.core.predictor import (
    AGAINST_GROK,
    FEATURES,
    FLAGS,
    FOR_GROK,
    FORMAT,
    GrokHistory,
    GrokPredictor,
    Prediction,
)


@pytest.fixture(scope="module")
def predictor() -> GrokPredictor:
    return GrokPredictor.from_default()


def _prefix(curve, step):
    n = curve["step"].index(step) + 1
    return {k: v[:n] for k, v in curve.items()}


def _memorized(curve) -> float:
    return next(s for s, a in zip(curve["step"], curve["train_acc"], strict=True) if a >= 0.99)


def test_from_default_loads_the_shipped_file_and_is_exported(predictor) -> None:
    assert grokschedule.GrokPredictor is GrokPredictor
    assert grokschedule.Prediction is Prediction
    assert set(predictor.features) <= set(FEATURES) and "val_loss_slope" in predictor.features
    assert predictor.flags == FLAGS
    trained = predictor.params["trained_on"]
    assert trained["curves"] >= 16 and 0 < trained["grokkers"] < trained["curves"]
    assert 0.0 < predictor.recommended_stop_below <= 0.2
    assert predictor.params["policy"]["applies_to"] == "p_high"
    worst = predictor.params["evaluation"]["worst"]
    assert {"full @2x auroc", "full @4x auroc", "every 5th report @2x auroc"} <= set(worst)
    assert len(predictor.params["classifier"]["bootstrap"]) >= 8


def test_shipped_coefficients_keep_each_features_sign(predictor) -> None:
    """A signed feature's shape is monotone the right way: every ramp weight has its sign."""
    weights_by_feature = predictor.params["classifier"]["weights"]
    for name, weights in zip(predictor.features, weights_by_feature, strict=True):
        sign = FEATURES[name].sign
        if sign == FOR_GROK:
            assert min(weights) >= 0, (name, weights)
        elif sign == AGAINST_GROK:
            assert max(weights) <= 0, (name, weights)


@pytest.mark.parametrize(
    "name", [n for n, f in FEATURES.items() if f.sign != 0 and n != "zero_loss_share"]
)
def test_a_signal_moving_toward_grokking_never_lowers_p_grok(
    predictor, recorded_curves, name
) -> None:
    """Falling validation loss, rising correct-class probability, gained accuracy, decaying
    norm: moving one such feature its good way from a real reading never lowers P(grok)."""
    curve = recorded_curves["nogrok_p47_wd01"]
    history = predictor.new_history()
    for i, step in enumerate(curve["step"][:16]):
        history.append(step, {k: v[i] for k, v in curve.items() if k != "step"})
    values, missing = history.features()
    k = predictor.features.index(name)
    spread = predictor.scale[k] * (predictor.knots[k, -1] - predictor.knots[k, 0])
    sweep = values[name] + FEATURES[name].sign * np.linspace(-spread, spread, 41)
    p = [predictor.predict_features(values | {name: float(v)}, missing).p_grok for v in sweep]
    assert np.all(np.diff(p) >= 0), (name, p)


def test_predict_returns_a_probability_an_eta_and_named_evidence(predictor, recorded_curves):
    curve = recorded_curves["grokker_p47_wd1"]
    prediction = predictor.predict(_prefix(curve, 800))
    assert isinstance(prediction, Prediction)
    assert 0.0 <= prediction.p_grok <= 1.0
    assert prediction.memorized_step == 50 and prediction.step == 800
    assert set(prediction.evidence) <= set(FEATURES)
    assert "val_loss_slope" in prediction.evidence
    assert set(prediction.contributions) == set(predictor.features)  # nothing missing here
    assert prediction.describe().startswith(f"P(grok) {prediction.p_grok:.2f}")
    assert 0.0 <= prediction.p_low <= prediction.p_grok <= prediction.p_high <= 1.0
    assert prediction.p_high > prediction.p_low  # the bootstrap spread is not zero
    assert prediction.confidently_below(prediction.p_high + 1e-9)
    assert not prediction.confidently_below(prediction.p_high)
    assert prediction.missing == () and prediction.out_of_range == ()
    if prediction.p_grok >= 0.5:
        assert prediction.eta_steps is not None and prediction.eta_steps > 0


@pytest.mark.parametrize(
    ("grokker", "memorizer"),
    [("grokker_p47_wd1", "memorizer_p47_wd0"), ("delayed_grokker_p47_small", "nogrok_p47_wd01")],
)
def test_grokker_ranks_above_memorizer_at_4x_memorization(
    predictor, recorded_curves, grokker, memorizer
) -> None:
    p = {}
    for name in (grokker, memorizer):
        curve = recorded_curves[name]
        at = 4 * _memorized(curve)
        p[name] = predictor.predict(_prefix(curve, at)).p_grok
    assert p[grokker] > p[memorizer], p


def test_before_memorization_and_after_grokking(predictor, recorded_curves) -> None:
    curve = recorded_curves["slow_grokker_p59_f04"]  # memorizes at step 150
    early = predictor.predict(_prefix(curve, 50))
    assert early.memorized_step is None and early.eta_steps is None
    assert early.p_grok == pytest.approx(predictor.prior)
    assert (early.p_low, early.p_high) == (0.0, 1.0)  # nothing read yet: no confidence
    done = predictor.predict(_prefix(curve, 4450))
    assert (done.p_grok, done.eta_steps) == (1.0, 0.0)
    assert done.p_low == done.p_high == 1.0


def test_a_feature_far_outside_the_fitted_range_is_flagged_and_widens_the_interval(
    predictor, recorded_curves
) -> None:
    curve = recorded_curves["grokker_p47_wd1"]
    history = predictor.new_history()
    for i, step in enumerate(curve["step"][:8]):
        history.append(step, {k: v[i] for k, v in curve.items() if k != "step"})
    values, missing = history.features()
    inside = predictor.predict_features(values, missing)
    k = predictor.features.index("val_loss_slope")
    far = predictor.mean[k] + predictor.scale[k] * (predictor.knots[k, -1] + 10)
    outside = predictor.predict_features(values | {"val_loss_slope": far}, missing)
    ignored = predictor.predict_features(values | {"val_loss_slope": math.nan}, missing)
    assert outside.out_of_range == ("val_loss_slope",) and inside.out_of_range == ()
    assert "out of range: val_loss_slope" in outside.describe()
    assert outside.p_low <= min(outside.p_grok, ignored.p_grok)
    assert outside.p_high >= max(outside.p_grok, ignored.p_high) - 1e-4


def test_online_history_matches_the_mapping_and_stays_bounded(predictor, recorded_curves) -> None:
    curve = recorded_curves["slow_grokker_p59_f04"]
    history = predictor.new_history()
    for i, step in enumerate(curve["step"][:80]):
        history.append(step, {k: v[i] for k, v in curve.items() if k != "step"})
    online = predictor.predict(history)
    offline = predictor.predict(_prefix(curve, curve["step"][79]))
    assert online == offline

    long = GrokHistory(capacity=32)
    sizes = {}
    for i in range(1, 20_001):
        long.append(i, {"train_acc": 1.0, "val_loss": 5.0 + math.sin(i), "weight_norm": 50.0})
        if i in (1_000, 20_000):
            sizes[i] = len(pickle.dumps(long))
            assert len(long.rows) <= 32
    assert max(sizes.values()) < 4096, sizes  # bounded: 1,000 or 20,000 reports alike
    assert long.rows[0][0] == 1 and long.rows[-1][0] > 19_000 - long.stride


def test_missing_optional_metrics_are_imputed_and_flagged(predictor, recorded_curves) -> None:
    curve = recorded_curves["grokker_p47_wd1"]
    bare = {k: v for k, v in _prefix(curve, 600).items() if not k.startswith("grok/")}
    bare["weight_norm"] = [None] * len(bare["step"])
    prediction = predictor.predict(bare)
    assert 0.0 <= prediction.p_grok <= 1.0
    flags = {k for k in prediction.contributions if k.startswith("missing:")}
    assert flags == {
        "missing:weight_norm",
        "missing:grok/val_correct_prob",
        "missing:grok/zero_loss_share",
    }
    assert "norm_slope" not in prediction.evidence and "prob_slope" not in prediction.evidence


@pytest.mark.parametrize(
    ("history", "message"),
    [
        ({}, "empty"),
        ({"train_acc": [1.0]}, "'step'"),
        ({"step": [], "train_acc": []}, "empty"),
        ({"step": [1, 2], "train_acc": [1.0]}, "equal lengths"),
        ({"step": [1, 3, 2], "train_acc": [1.0, 1.0, 1.0]}, "increasing"),
        ({"step": [1, 1], "train_acc": [1.0, 1.0]}, "increasing"),
        ({"step": [1, 2], "val_loss": [1.0, 1.0]}, "train_acc"),
    ],
)
def test_bad_histories_are_value_errors(predictor, history, message) -> None:
    with pytest.raises(ValueError, match=message):
        predictor.predict(history)


def test_json_round_trip_and_bad_files(predictor, tmp_path) -> None:
    path = tmp_path / "p.json"
    predictor.to_json(path)
    again = GrokPredictor.from_json(path)
    assert again.params == predictor.params
    assert GrokPredictor.from_json(path.read_text()).params == predictor.params
    assert again.params["format"] == FORMAT
    with pytest.raises(ValueError, match="format"):
        GrokPredictor({"format": "something else"})
    with pytest.raises(ValueError, match=r"no longer read.*bench predictor"):
        GrokPredictor({"format": "grokschedule.grok_predictor/1", "features": []})
    broken = json.loads(path.read_text())
    broken["classifier"]["weights"] = broken["classifier"]["weights"][:-1]
    with pytest.raises(ValueError, match="lengths"):
        GrokPredictor(broken)
    unsorted = json.loads(path.read_text())
    unsorted["knots"][0] = unsorted["knots"][0][::-1]
    with pytest.raises(ValueError, match="sorted"):
        GrokPredictor(unsorted)


def test_newton_logistic_fit_and_auroc() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 2))
    true = np.array([-0.5, 2.0, -1.0])
    p = 1 / (1 + np.exp(-(true[0] + x @ true[1:])))
    y = (rng.random(4000) < p).astype(float)
    beta = fit_logistic(x, y, np.ones(4000), l2=1e-6)
    assert beta == pytest.approx(true, abs=0.15)
    scores, labels = rng.random(300), rng.random(300) < 0.4
    pairs = [(s1 > s0) + 0.5 * (s1 == s0) for s1 in scores[labels] for s0 in scores[~labels]]
    assert auroc(scores, labels.astype(float)) == pytest.approx(np.mean(pairs))
    assert auroc(np.array([0.1, 0.1]), np.array([1.0, 0.0])) == 0.5


def test_median_regression_ignores_a_late_tail_that_drags_the_mean() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2000, 1))
    y = 1.0 + 0.5 * x[:, 0] + rng.laplace(scale=0.1, size=2000)
    y[:200] += 5.0  # one run in ten groks far later than its signals say
    median = fit_median(x, y, np.ones(2000), 1e-6)
    mean = fit_ridge(x, y, np.ones(2000), 1e-6)
    assert median == pytest.approx([1.0, 0.5], abs=0.05)
    assert mean[0] > 1.3


def _kkt(x, y, beta, l2, lower, upper):
    """The constrained optimum's conditions: zero gradient where free, pointing out at a bound."""
    design = np.column_stack([np.ones(len(x)), x])
    p = 1 / (1 + np.exp(-(design @ beta)))
    gradient = design.T @ (p - y) + l2 * np.r_[0.0, beta[1:]]
    at_lower, at_upper = beta <= lower + 1e-9, beta >= upper - 1e-9
    free = ~(at_lower | at_upper)
    assert np.all(np.abs(gradient[free]) < 1e-5), gradient[free]
    assert np.all(gradient[at_lower] >= -1e-5) and np.all(gradient[at_upper] <= 1e-5)


def test_sign_bounds_hold_and_the_fit_is_the_constrained_optimum() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 4))
    x[:, 1] += 0.8 * x[:, 0]  # correlated, so a bound moves the other coefficients
    true = np.array([0.3, 1.5, -1.0, 0.7, -0.4])
    y = (rng.random(3000) < 1 / (1 + np.exp(-(true[0] + x @ true[1:])))).astype(float)
    lower = np.array([-np.inf, -np.inf, 0.0, -np.inf, 0.0])  # columns 2 and 4 may not go negative
    upper = np.array([np.inf, np.inf, np.inf, 0.0, np.inf])  # column 3 may not go positive
    beta = fit_logistic(x, y, np.ones(3000), 0.1, lower=lower, upper=upper)
    assert np.all(beta >= lower) and np.all(beta <= upper)
    assert beta[2] == 0.0 and beta[4] == 0.0 and beta[3] == 0.0  # the data pull the wrong way
    _kkt(x, y, beta, 0.1, lower, upper)
    free = fit_logistic(x, y, np.ones(3000), 0.1)
    _kkt(x, y, free, 0.1, np.full(5, -np.inf), np.full(5, np.inf))
    assert free[2] < 0 and free[3] > 0  # unconstrained, the signs would flip


def test_a_centred_prior_pulls_the_fit_toward_its_centre() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 2))
    y = (rng.random(200) < 1 / (1 + np.exp(-(x @ [2.0, -2.0])))).astype(float)
    centre = np.array([1.0, 0.0, 0.0])
    stiff = fit_logistic(x, y, np.ones(200), np.full(3, 1e6), center=centre)
    assert stiff == pytest.approx(centre, abs=1e-3)
    loose = fit_logistic(x, y, np.ones(200), np.full(3, 1e-6), center=centre)
    assert loose[1] > 1.0 and loose[2] < -1.0
    as_matrix = fit_logistic(x, y, np.ones(200), np.diag([1.0, 2.0, 3.0]), center=centre)
    as_vector = fit_logistic(x, y, np.ones(200), np.array([1.0, 2.0, 3.0]), center=centre)
    assert as_matrix == pytest.approx(as_vector, abs=1e-8)
    with pytest.raises(ValueError, match="l2"):
        fit_logistic(x, y, np.ones(200), np.ones(2))
    with pytest.raises(ValueError, match="lower"):
        fit_logistic(x, y, np.ones(200), 1.0, lower=np.zeros(2))
