"""GrokScheduler inside a real Ray Tune sweep on a local Ray cluster, logging to MLflow (sqlite)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from ray import tune

from grokschedule.adapters.trainables.modular import modular_trainable
from grokschedule.app.runner import SweepSettings, run_sweep
from grokschedule.core.decision import DecisionKind
from grokschedule.core.phases import Phase
from tune_plugins import GrokScheduler

pytestmark = pytest.mark.slow


def _settings(root: Path) -> SweepSettings:
    return SweepSettings(
        param_space={
            "p": 47,
            "train_fraction": 0.5,
            "lr": 3e-3,
            "embed_dim": 64,
            "hidden_dim": 256,
            "eval_every": 50,
            "max_steps": 3_000,
            "weight_decay": tune.grid_search([1.0, 0.0]),
        },
        scheduler={
            "metric": "val_acc",
            "mode": "max",
            "time_attr": "step",
            "max_t": 3_000,
            "grok_threshold": 0.95,
        },
        trainable=modular_trainable,
        root=root,
        experiment="integration",
    )


def test_sweep_keeps_the_grokker_and_stops_the_memorizer(local_ray, tmp_path: Path) -> None:
    outcome = run_sweep(_settings(tmp_path))
    by_wd = {
        result.config["weight_decay"]: result.metrics["trial_id"] for result in outcome.results
    }
    trials = {t.trial_id: t for t in outcome.summary.trials}

    grokker = trials[by_wd[1.0]]
    assert grokker.phase is Phase.GROKKED
    assert grokker.grok_step is not None and grokker.grok_step <= 2_000
    assert grokker.steps_used == grokker.grok_step  # stopped as soon as it grokked

    memorizer = trials[by_wd[0.0]]
    assert memorizer.phase is Phase.STALLED
    assert "never-grok" in memorizer.last
    assert memorizer.steps_used < 2_000

    # run_sweep hands metric and mode to tune.TuneConfig (Tune's convention), so the result grid
    # knows what "best" means without being told.
    best = outcome.results.get_best_result()
    assert best.config["weight_decay"] == 1.0
    assert best.metrics["val_acc"] >= 0.95

    # MLflow holds one run per trial, with params, step-indexed metrics, tags and the log.
    client = mlflow.MlflowClient(outcome.tracking_uri)
    experiment = client.get_experiment_by_name("integration")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`grok.role` = 'trial'"
    )
    assert len(runs) == 2
    for run in runs:
        assert run.data.params["weight_decay"] in {"0.0", "1.0"}
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert [m.step for m in history][:3] == [50, 100, 150]
        assert run.data.tags["grok.final_phase"] in {"grokked", "stalled"}
        assert run.data.tags["grok.verdict"].startswith("STOP: ")
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "grok")]
        assert artifacts == ["grok/decisions.json"]
        decisions = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/grok/decisions.json")
        assert decisions[-1]["kind"] == DecisionKind.STOP.value
        assert decisions[-1]["signals"]  # the numbers behind the reason


def _no_val_loss(config: dict) -> None:
    for step in range(1, 4):
        tune.report({"step": step, "val_acc": 0.0, "train_loss": 1.0, "train_acc": 0.5})


def test_a_metric_that_never_arrives_is_a_clear_error(local_ray, tmp_path: Path) -> None:
    scheduler = GrokScheduler(metric="val_acc", mode="max", max_t=10, weight_norm=None)
    tuner = tune.Tuner(
        _no_val_loss,
        tune_config=tune.TuneConfig(scheduler=scheduler),
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
    )
    with pytest.raises(Exception, match=r"did not report \['val_loss'\]"):
        tuner.fit()
