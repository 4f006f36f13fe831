"""A language model's probe-set signals reach the console table and pass the MLflow callback's
and logger's filters under their own names (the scheduler's copies under ``scheduler/``)."""

from __future__ import annotations

import io

from ray.tune.experiment import Trial

from grokschedule.adapters.mlflow_callback import numeric_metrics
from grokschedule.core.contract import probe_metric
from grokschedule.tracking.logger import _loggable
from tune_plugins import GrokConsoleReporter, GrokScheduler


def lm_result(step: int) -> dict:
    return {
        "step": step,
        "train_loss": 0.01,
        "train_acc": 1.0,
        "val_loss": 2.0,
        "val_acc": 0.25,
        "weight_norm": 10.0,
        probe_metric("val", "exact_match"): 0.25,
        probe_metric("val", "ppl"): 7.389,
        probe_metric("probe", "exact_match"): 0.05,
        probe_metric("probe", "ppl"): 20.1,
        probe_metric("probe", "conf_wrong"): 0.9,
    }


def test_console_shows_probe_exact_match_and_ppl_only_for_trials_that_report_them() -> None:
    scheduler = GrokScheduler(metric="val_acc", mode="max", max_t=3000)
    lm = Trial("lm", config={}, trial_id="lm001", stub=True)
    for step in (100, 200, 300):
        scheduler.on_trial_result(None, lm, lm_result(step))  # type: ignore[arg-type]
    lm.run_metadata.last_result = lm_result(300)
    reporter = GrokConsoleReporter(scheduler, stream=io.StringIO())
    header, row = reporter.table([lm]).splitlines()
    assert header.index("probe EM/ppl") > header.index("val")
    assert "val 0.25/7.39 | probe 0.05/20.1" in row
    decision = scheduler.last_decision("lm001")
    assert decision is not None and decision.signals["probe/probe/conf_wrong"] == 0.9

    plain = Trial("mlp", config={}, trial_id="mlp01", stub=True)
    plain.run_metadata.last_result = {"step": 1, "val_acc": 0.5}
    assert "probe EM/ppl" not in reporter.table([plain])  # no LM trial: the table as before


def test_mlflow_filters_keep_the_probe_metrics() -> None:
    logged = numeric_metrics(lm_result(300))
    for name in (probe_metric("val", "ppl"), probe_metric("probe", "exact_match")):
        assert name in logged and _loggable(name, logged[name])
    assert _loggable("scheduler/probe/val/exact_match_change", 0.1)  # a decision's signal
