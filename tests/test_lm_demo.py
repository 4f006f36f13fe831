"""``grokschedule demo --task lm`` at its quick size, through real Ray Tune: two causal-LM trials
on the DeepSpeed trainer (ZeRO-2, gloo, one Train V2 worker each) under GrokScheduler with
interventions on, logged to a sqlite MLflow store — the full sweep's path, shortened."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

pytest.importorskip("deepspeed")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from grokschedule.app.demo import LM_DEMO_EXPERIMENT, lm_demo_settings
from grokschedule.app.runner import run_sweep

pytestmark = pytest.mark.slow


def test_quick_lm_demo_decides_every_trial_and_logs_it(local_ray, tmp_path: Path) -> None:
    settings = lm_demo_settings(tmp_path, quick=True)
    outcome = run_sweep(settings)
    assert [r.error for r in outcome.results] == [None, None]
    trials = outcome.summary.trials
    assert len(trials) == 2
    for trial in trials:
        assert trial.config["task"] == "lm" and trial.config["lm_op"] == "compose"
        assert trial.steps_used > 0 and trial.last != "no result yet"

    client = mlflow.MlflowClient(outcome.tracking_uri)
    experiment = client.get_experiment_by_name(LM_DEMO_EXPERIMENT)
    runs = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`grok.role` = 'trial'"
    )
    assert len(runs) == 2
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert [m.step for m in history][:2] == [50, 100]  # exact match on held-out pairs
        assert client.get_metric_history(run.info.run_id, "control/acked_id")  # live channel
        assert run.data.tags["grok.verdict"]
