"""Scheduler → control channel → trainer, end to end on a real local Ray cluster: GrokScheduler
with interventions kicks the built-in trainable (control=True) on its plateau with a deliberately
harmful kick (lr × 1000), the trainer applies and acknowledges it, the scheduler sees training
get worse and orders a ROLLBACK, and the run goes on from the pre-kick snapshot (~40 s)."""

from __future__ import annotations

from pathlib import Path

import pytest
from ray import tune

from grokschedule.adapters.trainables.modular import modular_trainable
from grokschedule.core.decision import DecisionKind
from grokschedule.core.kicks import LR_MULTIPLY, Kick
from tune_plugins import GrokScheduler

CONFIG = {
    "p": 23,
    "train_fraction": 0.5,
    "embed_dim": 16,
    "hidden_dim": 32,
    "weight_decay": 0.0,  # stays on the plateau: the kick comes before any grokking
    "eval_every": 25,
    "max_steps": 600,
    "control": True,
}


@pytest.mark.slow
def test_a_harmful_kick_is_applied_live_then_rolled_back(local_ray, tmp_path: Path) -> None:
    scheduler = GrokScheduler(
        metric="val_acc",
        mode="max",
        max_t=600,
        patience_factor=2.0,
        min_patience=100,
        interventions={
            "kicks": [Kick(LR_MULTIPLY, {"factor": 1000.0}, reason="deliberately harmful")],
            "kick_at": 0.25,
            "max_kicks": 1,
            "rollback_window": 0,
        },
    )
    tuner = tune.Tuner(
        modular_trainable,
        param_space=CONFIG,
        tune_config=tune.TuneConfig(scheduler=scheduler),
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
    )
    (result,) = tuner.fit()
    assert result.error is None
    rows = result.metrics_dataframe.sort_values("step").to_dict("records")
    (trial_id,) = scheduler.policy.trial_ids()
    log = scheduler.decision_log(trial_id)
    kinds = [d.kind for d in log]
    assert DecisionKind.KICK in kinds and DecisionKind.ROLLBACK in kinds
    kick = next(d for d in log if d.kind is DecisionKind.KICK)
    rollback = next(d for d in log if d.kind is DecisionKind.ROLLBACK)
    assert kick.command.id == 0 and rollback.command.id == 1
    assert "patience" in kick.reason and rollback.reason.startswith("rollback: lr_multiply kick")

    # The trainer acknowledged both, at the first poll after the report that decided each (the
    # trainable goes on while the driver decides, so that poll may be one report later).
    kicked = next(r for r in rows if r["control/acked_id"] == 0)
    assert kick.step <= kicked["control/applied_step"] <= kick.step + 50
    rolled = next(r for r in rows if r["control/acked_id"] == 1)
    assert rolled["control/rollbacks"] == 1 and rolled["control/kicks_active"] == 0
    assert rollback.step <= rolled["control/applied_step"] <= rollback.step + 50
    before = next(r for r in rows if r["step"] == kick.step)
    assert rolled["train_acc"] >= before["train_acc"] - 0.05  # back on the pre-kick weights
    assert rows[-1]["step"] > rolled["step"]  # and the run went on
