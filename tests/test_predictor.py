"""GrokPredictor: the public API, its errors, the shipped coefficients, bounded memory, and that
it ranks recorded grokkers above recorded memorizers (curves it was not fitted on)."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest

import grokschedule
from grokschedule.core.fitting import auroc, fit_logistic
from grokschedule.core.predictor import FEATURES, FLAGS, GrokHistory, GrokPredictor, Prediction


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
    assert set(predictor.params["evaluation"]) >= {"full @2x", "full @4x"}


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
    done = predictor.predict(_prefix(curve, 4450))
    assert (done.p_grok, done.eta_steps) == (1.0, 0.0)


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
    with pytest.raises(ValueError, match="format"):
        GrokPredictor({"format": "something else"})
    broken = json.loads(path.read_text())
    broken["classifier"]["weights"] = broken["classifier"]["weights"][:-1]
    with pytest.raises(ValueError, match="lengths"):
        GrokPredictor(broken)


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


def test_bench_predictor_fits_a_bank_and_judges_held_out_ops(tmp_path, capsys) -> None:
    """``grokschedule bench predictor`` end to end on a five-curve bank made from tests/data (two
    ops, each holding a grokker and a non-grokker, so each fold trains on both classes)."""
    from conftest import DATA

    from grokschedule.bench.bank import CONTRACT_NAMES, GRID_COLUMNS, METRICS, CurveBank
    from grokschedule.cli import main

    ops = {
        "grokker_p47_wd1": "add",
        "memorizer_p47_wd0": "add",
        "slow_grokker_p59_f04": "add",  # groks at 4,450: a non-grokker within 3,000 steps
        "delayed_grokker_p47_small": "sub",
        "nogrok_p47_wd01": "sub",
    }
    raw = json.loads((DATA / "recorded_curves.json").read_text())
    curves = [{k: v[:60] for k, v in raw[name]["curve"].items()} for name in ops]
    arrays = {"step": np.array(curves[0]["step"])}
    for name in METRICS:
        arrays[f"metric/{name}"] = np.array([c[CONTRACT_NAMES[name]] for c in curves], "float32")
    for column in GRID_COLUMNS:
        values = list(ops.values()) if column == "op" else [47] * len(ops)
        arrays[f"grid/{column}"] = np.array(values)
    np.savez(tmp_path / "bank.npz", **arrays)
    assert [CurveBank.load(tmp_path / "bank.npz").grok_step(i) for i in range(5)] == [
        1650,
        None,
        None,
        2400,
        None,
    ]

    out, report = tmp_path / "predictor.json", tmp_path / "report.json"
    argv = ["bench", "predictor", "--bank", str(tmp_path / "bank.npz")]
    assert main([*argv, "--out", str(out), "--report", str(report)]) == 0
    table = capsys.readouterr().out
    assert "| 2× memorization | full |" in table and "| 4× memorization | full |" in table
    fitted = GrokPredictor.from_json(out)
    assert fitted.params["trained_on"]["curves"] == 5
    assert fitted.params["trained_on"]["ops"] == ["add", "sub"]
    results = json.loads(report.read_text())["results"]
    assert {(r["ratio"], r["variant"]) for r in results} >= {(2.0, "full"), (4.0, "full")}
    for r in results:
        assert r["runs"] == 5 and r["grokkers"] == 2
        assert 0.0 <= r["brier"] <= 1.0 and sum(b["n"] for b in r["reliability"]) == 5
