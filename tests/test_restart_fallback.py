"""Kicks by restart for a trainable that does not poll the control channel, end to end: the
real GrokScheduler on a real local Ray cluster pauses the trial at a result that carries a
checkpoint and resumes it from that checkpoint under the changed config (~30 s); and the
scheduler's bookkeeping of overlapping kick windows, without Ray."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.result import SHOULD_CHECKPOINT
from ray.tune.schedulers import TrialScheduler

from grokschedule.core.decision import DecisionKind
from grokschedule.core.kicks import GROKFAST, LORA_RANK, LR_MULTIPLY, WEIGHT_DECAY, Kick
from tune_plugins import GrokScheduler


def plateau_trainable(config: dict) -> None:
    """A run stuck on its plateau that never polls: reports the metric contract and its lr,
    checkpoints (its step) at every even step, and resumes from its checkpoint."""
    step = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            step = int((Path(directory) / "step").read_text())
    while step < 30:
        step += 1
        metrics = {
            "step": step,
            "lr": config["lr"],
            "val_acc": 0.02,
            "train_loss": 1e-3,
            "train_acc": 1.0,
            "val_loss": 6.0,
            "weight_norm": 40.0,
        }
        if step % 2 == 0:
            with tempfile.TemporaryDirectory() as directory:
                (Path(directory) / "step").write_text(str(step))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
        else:
            tune.report(metrics)


class _Results(tune.Callback):
    """Every result as the driver saw it (a trial's progress.csv may lose rows to the sync of a
    restart; the scheduler's view is what counts here)."""

    def __init__(self) -> None:
        self.history: list[tuple[int, float]] = []

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict) -> None:
        self.history.append((int(result["step"]), result["lr"]))


@pytest.mark.slow
def test_a_kick_reaches_a_plain_trainable_by_restart_and_its_window_ends_by_restart(
    local_ray, tmp_path: Path
) -> None:
    scheduler = GrokScheduler(
        metric="val_acc",
        mode="max",
        max_t=30,
        patience_factor=1.0,
        min_patience=12,
        interventions={
            "kicks": [
                Kick(GROKFAST),  # no config equivalent: skipped, never chosen again
                Kick(WEIGHT_DECAY, {"factor": 3.0}),  # weight decay 0: never chosen
                Kick(LR_MULTIPLY, {"factor": 2.0}, duration_steps=4),
            ],
            "kick_at": 0.1,
            "max_kicks": 3,
            "cooldown": 0,
        },
    )
    results = _Results()
    tuner = tune.Tuner(
        plateau_trainable,
        param_space={"lr": 0.1, "weight_decay": 0.0},
        tune_config=tune.TuneConfig(scheduler=scheduler),
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0, callbacks=[results]),
    )
    (result,) = tuner.fit()
    assert result.error is None
    history = results.history
    steps = [step for step, _ in history]
    assert steps == list(range(1, steps[-1] + 1))  # resumed from its checkpoints, no repeats

    (trial_id,) = scheduler.policy.trial_ids()
    log = scheduler.decision_log(trial_id)
    kicks = [d for d in log if d.kind is DecisionKind.KICK]
    kinds = [d.command.kick.kind for d in kicks]
    assert WEIGHT_DECAY not in kinds and kinds.count(GROKFAST) <= 1
    assert LR_MULTIPLY in kinds
    for decision in kicks:
        if decision.command.kick.kind == GROKFAST:
            assert "not applied: a grokfast kick cannot be a config change" in decision.reason
    kicked = kicks[kinds.index(LR_MULTIPLY)]
    assert "applied by restart with config {'lr': 0.2}" in kicked.reason
    assert "undone by restart after 4 steps" in kicked.reason

    # Applied at the first even step from the kick on, undone at the first even step ≥ 4 later.
    applied = int(kicked.step) + int(kicked.step) % 2
    undone = applied + 4
    lrs = dict(history)
    assert all(lrs[s] == 0.1 for s in range(1, applied + 1))
    assert all(lrs[s] == 0.2 for s in range(applied + 1, undone + 1))
    assert all(lrs[s] == 0.1 for s in steps if s > undone)
    assert result.config["lr"] == 0.1 and steps[-1] > undone
    # The kick policy read the scheduler's acknowledgement: quiet counts from the kick.
    assert scheduler.policy.kicks.trial(trial_id).last_kick_step == applied


def test_overlapping_kicks_by_restart_each_end_on_their_own_schedule() -> None:
    """No Ray needed: ``restart_with_config`` only changes the trial's config and says PAUSE."""
    scheduler = GrokScheduler(
        metric="val_acc",
        mode="max",
        max_t=200,
        patience_factor=1.0,
        min_patience=40,
        predictor=False,  # kicks on the quiet-plateau clock alone, so their steps are known
        interventions={
            "kicks": [
                Kick(LR_MULTIPLY, {"factor": 2.0}, duration_steps=10),
                Kick(WEIGHT_DECAY, {"factor": 2.0}, duration_steps=100),
            ],
            "kick_at": 0.05,
            "cooldown": 0,
        },
    )
    trial = Trial("plain", config={"lr": 0.1, "weight_decay": 0.5}, stub=True)
    paused = []
    for step in range(1, 30):
        result = {
            "step": step,
            "val_acc": 0.02,
            "train_loss": 1e-3,
            "train_acc": 1.0,
            "val_loss": 6.0,
            "weight_norm": 40.0,
            SHOULD_CHECKPOINT: step % 2 == 0,
        }
        if scheduler.on_trial_result(None, trial, result) == TrialScheduler.PAUSE:
            paused.append((step, trial.config["lr"], trial.config["weight_decay"]))
    assert paused == [(6, 0.2, 0.5), (8, 0.2, 1.0), (16, 0.1, 1.0)]
    kicks = [d for d in scheduler.decision_log(trial.trial_id) if d.kind is DecisionKind.KICK]
    assert "applied by restart with config {'lr': 0.2} at the next result with a checkpoint" in (
        kicks[0].reason
    )
    assert "applied by restart with config {'weight_decay': 1.0} now" in kicks[1].reason
    # A result repeating a step already seen (a resume from an older checkpoint) is ignored.
    before = scheduler.last_decision(trial.trial_id)
    assert scheduler.on_trial_result(None, trial, {**result, "step": 3}) == TrialScheduler.CONTINUE
    assert scheduler.last_decision(trial.trial_id) is before


def test_a_lora_rank_kick_reaches_an_lm_trial_by_restart_and_no_trial_without_an_adapter() -> None:
    """The default kicks, no Ray: an LM trial with a LoRA adapter gets the rank × 4 first, as a
    restart under ``lm_lora_rank`` 32; a trial without ``lm_lora_rank`` never gets it."""
    scheduler = GrokScheduler(
        metric="val_acc",
        mode="max",
        max_t=200,
        patience_factor=1.0,
        min_patience=40,
        predictor=False,
        interventions={"kick_at": 0.05, "cooldown": 0, "max_kicks": 5},
    )
    lm = Trial("lm", config={"lr": 1e-3, "weight_decay": 0.1, "lm_lora_rank": 8}, stub=True)
    mlp = Trial("mlp", config={"lr": 1e-3, "weight_decay": 0.1}, stub=True)
    for step in range(1, 60):
        result = {
            "step": step,
            "val_acc": 0.02,
            "train_loss": 1e-3,
            "train_acc": 1.0,
            "val_loss": 6.0,
            "weight_norm": 40.0,
            SHOULD_CHECKPOINT: step % 2 == 0,
        }
        for trial in (lm, mlp):
            scheduler.on_trial_result(None, trial, result)
    kicked = {
        name: [
            d.command.kick.kind
            for d in scheduler.decision_log(trial.trial_id)
            if d.kind is DecisionKind.KICK
        ]
        for name, trial in (("lm", lm), ("mlp", mlp))
    }
    assert kicked["lm"][0] == LORA_RANK and lm.config["lm_lora_rank"] == 32
    assert kicked["mlp"] and LORA_RANK not in kicked["mlp"] and "lm_lora_rank" not in mlp.config
