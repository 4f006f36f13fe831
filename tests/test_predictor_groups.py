"""``grokschedule bench predictor``: banks in, leave-one-group-out per grouping column out, with
per-group, pooled and worst-group numbers; and the pieces it is built from."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import DATA

from grokschedule.bench import predictor_fit as fit
from grokschedule.bench.bank import CONTRACT_NAMES, GRID_COLUMNS, METRICS, CurveBank
from grokschedule.cli import main
from grokschedule.core.predictor import GrokPredictor

# Recorded curves as two tiny banks: each op holds a grokker and a non-grokker (within the
# 60 recorded steps), so every held-out op is judged on both classes.
RUNS = {
    "grokker_p47_wd1": ("add", 1.0),
    "memorizer_p47_wd0": ("add", 0.0),
    "slow_grokker_p59_f04": ("add", 1.0),  # groks at 4,450: a non-grokker within 3,000 steps
    "delayed_grokker_p47_small": ("sub", 1.0),
    "nogrok_p47_wd01": ("sub", 0.1),
}


def _bank(path, names, p: int):
    raw = json.loads((DATA / "recorded_curves.json").read_text())
    curves = [{k: v[:60] for k, v in raw[name]["curve"].items()} for name in names]
    arrays = {"step": np.array(curves[0]["step"])}
    for name in METRICS:
        arrays[f"metric/{name}"] = np.array([c[CONTRACT_NAMES[name]] for c in curves], "float32")
    for column in GRID_COLUMNS:
        values = {
            "op": [RUNS[n][0] for n in names],
            "weight_decay": [RUNS[n][1] for n in names],
            "p": [p] * len(names),
        }.get(column, [1] * len(names))
        arrays[f"grid/{column}"] = np.array(values)
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def banks(tmp_path_factory):
    root = tmp_path_factory.mktemp("banks")
    names = list(RUNS)
    return [_bank(root / "a.npz", names, 47), _bank(root / "b.npz", names[:2], 53)]


def test_bench_fits_banks_and_judges_every_grouping_column(banks, tmp_path, capsys) -> None:
    out, report_path = tmp_path / "predictor.json", tmp_path / "report.json"
    argv = ["bench", "predictor", "--bank", str(banks[0]), "--bank", str(banks[1])]
    assert main([*argv, "--bootstrap", "4", "--out", str(out), "--report", str(report_path)]) == 0
    table = capsys.readouterr().out
    assert "**op**" in table and "**weight_decay**" in table and "**p**" in table
    assert "| pooled |" in table and "Worst held-out group" in table

    fitted = GrokPredictor.from_json(out)
    trained = fitted.params["trained_on"]
    assert trained["curves"] == 7 and [b["curves"] for b in trained["banks"]] == [5, 2]
    assert trained["groups"] == {
        "op": ["add", "sub"],
        "p": ["47", "53"],
        "weight_decay": ["0", "0.1", "1"],
    }
    assert 2 <= len(fitted.params["classifier"]["bootstrap"]) <= 4

    report = json.loads(report_path.read_text())
    op = report["groupings"]["op"]
    assert set(op["groups"]) == {"add", "sub"}
    add = op["groups"]["add"]["full @2x"]
    assert add["runs"] == 5 and add["grokkers"] == 2  # 3 add curves in bank a, 2 in bank b
    assert 0.0 <= add["brier"] <= 1.0 and sum(b["n"] for b in add["reliability"]) == 5
    assert op["pooled"]["full @2x"]["runs"] == 7
    assert {"every 5th report @2x", "no grok/* @4x", "stops"} <= set(op["pooled"])
    # too few runs of a class anywhere here to count as a worst group
    assert all(w["value"] is None for w in op["worst"].values())


def test_thinning_keeps_every_nth_report() -> None:
    curve = {"step": [100, 200, 300, 400, 500, 600], "val_acc": [0, 1, 2, 3, 4, 5]}
    assert fit.thin(curve, 5) == {"step": [500], "val_acc": [4]}
    assert fit.thin(curve, 2) == {"step": [200, 400, 600], "val_acc": [1, 3, 5]}


def test_the_bench_design_matrix_is_the_predictors_design(banks) -> None:
    predictor = GrokPredictor.from_default()
    curves = [CurveBank.load(banks[0]).curve(i) for i in range(3)]
    samples = fit.build_samples([{k: v.tolist() for k, v in c.items()} for c in curves], 0.95)
    matrix = fit.design_matrix(samples, predictor.params)
    names = list(fit.FEATURES)
    for row in range(0, len(samples.label), 7):
        values = dict(zip(names, samples.x[row].tolist(), strict=True))
        missing = [f for f, on in zip(fit.FLAGS, samples.flags[row], strict=True) if on]
        assert matrix[row] == pytest.approx(predictor.design(values, missing)[0])


def _samples(ratios, labels, curves):
    n = len(ratios)
    return fit.Samples(
        x=np.zeros((n, len(fit.FEATURES))),
        flags=np.zeros((n, len(fit.FLAGS))),
        label=np.array(labels, dtype=float),
        step=np.array(ratios, dtype=float) * 100,
        grok=np.where(np.array(labels) > 0, 5000.0, np.nan),
        ratio=np.array(ratios, dtype=float),
        curve=np.array(curves),
        variant=np.array(["full"] * n),
        weight=np.ones(n),
    )


def test_a_stop_needs_two_low_readings_in_a_row_from_2x_on() -> None:
    # grokker 0: low at 1.5× (not judged) and once at 3×; grokker 1: low at 3× and 4× (p_high
    # too); non-grokker 2: low at 2× and 3× by P(grok) only
    s = _samples([1.5, 2, 3, 4, 1.5, 2, 3, 4, 2, 3], [1] * 8 + [0, 0], [0] * 4 + [1] * 4 + [2] * 2)
    high = np.array([0.001, 0.5, 0.001, 0.5, 0.5, 0.5, 0.001, 0.001, 0.02, 0.02])
    out = fit.Predicted(prob=high / 4, low=high / 8, high=high, eta=high, logit=high)
    assert fit.stops(s, out, bar=0.01) == {
        "grokkers": 2,
        "non_grokkers": 1,
        "killed_by_p_grok": 1,
        "stopped_by_p_grok": 1,
        "killed_by_p_high": 1,
        "stopped_by_p_high": 0,
    }


def test_the_worst_group_is_the_lowest_among_groups_with_enough_of_each_class() -> None:
    def entry(auroc, runs, grokkers):
        return {"full @2x": {"auroc": auroc, "runs": runs, "grokkers": grokkers}}

    groups = {"a": entry(0.9, 20, 10), "b": entry(0.7, 20, 10), "tiny": entry(0.2, 6, 2)}
    assert fit.worst(groups, "full @2x", "auroc") == {"group": "b", "value": 0.7}
    assert fit.worst({"tiny": groups["tiny"]}, "full @2x", "auroc")["group"] is None
