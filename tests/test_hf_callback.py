"""GrokTrainerCallback in real tiny ``transformers.Trainer`` runs: a one-layer Llama classifier
(11k parameters, built in code) memorizing random labels, which never generalizes. The policy
stops it with its reason in the log history, kicks it (the optimizer's lr and the schedule's base
really change, behind a rollback point), rolls the harmful kick back to the saved weights, and
extends a run whose evidence is fresh at ``max_t``; the decisions reach the Trainer's MLflow run,
and a run resumed from a checkpoint goes on with the scheduler state saved in it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
from callback_helpers import (  # noqa: E402
    FAST,
    RESUMABLE,
    assert_settings_are_schedulers,
    held,
)
from transformers import (  # noqa: E402
    LlamaConfig,
    LlamaForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from grokschedule.core.decision import Cause, DecisionKind  # noqa: E402
from grokschedule.core.kicks import Kick  # noqa: E402
from grokschedule.integrations.common import MissingMetricError  # noqa: E402
from grokschedule.integrations.hf import STATE_FILE, GrokTrainerCallback  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """An 11k-parameter model runs ~10× faster on one thread than on contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class RandomLabels(torch.utils.data.Dataset):
    """Token sequences with random labels: memorized by the model, never generalized."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randint(1, 32, (n, 8), generator=g)
        self.y = torch.randint(0, 4, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.x[i], "labels": self.y[i]}


def accuracy(prediction) -> dict[str, float]:
    predicted = np.argmax(prediction.predictions, -1)
    return {"accuracy": float((predicted == prediction.label_ids).mean())}


def make_trainer(
    tmp_path: Path,
    callbacks: list[TrainerCallback],
    *,
    max_steps: int,
    schedule: str = "constant",
    weight_decay: float = 0.0,
    compute_metrics=accuracy,
    report_to: list[str] | None = None,
    save_steps: int | None = None,
) -> Trainer:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=16,
        num_labels=4,
        pad_token_id=0,
    )
    args = TrainingArguments(
        str(tmp_path / "out"),
        max_steps=max_steps,
        per_device_train_batch_size=32,
        learning_rate=1e-2,
        weight_decay=weight_decay,
        lr_scheduler_type=schedule,
        eval_strategy="steps",
        eval_steps=5,
        logging_steps=5,
        save_strategy="no" if save_steps is None else "steps",
        save_steps=save_steps or 500,
        report_to=report_to or [],
        disable_tqdm=True,
        use_cpu=True,
    )
    return Trainer(
        model=LlamaForSequenceClassification(config),
        args=args,
        train_dataset=RandomLabels(16, seed=1),
        eval_dataset=RandomLabels(64, seed=2),
        compute_metrics=compute_metrics,
        callbacks=callbacks,
    )


def evaluations(trainer: Trainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "eval_loss" in entry]


def test_memorizer_is_stopped_with_its_reason_in_the_log_history(tmp_path: Path) -> None:
    callback = GrokTrainerCallback(**FAST)
    trainer = make_trainer(tmp_path, [callback], max_steps=400)
    trainer.train()

    stop = callback.run.last_decision
    assert stop.kind is DecisionKind.STOP and stop.cause is Cause.NEVER_GROK
    assert trainer.state.global_step == stop.step < 200  # stopped long before max_steps
    last = evaluations(trainer)[-1]
    assert last["step"] == stop.step and last["scheduler/decision"] == "STOP"
    assert last["scheduler/reason"] == stop.reason and stop.reason.startswith("never-grok: ")
    assert last["scheduler/cause"] == "never-grok" and last["scheduler/phase"] == "stalled"
    # Every evaluation carries the weight norm the callback computed and the decision on it.
    assert all(e["weight_norm"] > 0 and "scheduler/decision" in e for e in evaluations(trainer))
    assert [d.phase.value for d in callback.run.decisions][-2:] == ["plateau", "stalled"]


class Probe(TrainerCallback):
    """Reads the optimizer, the schedule and the weights right after each decision."""

    def __init__(self, rollback: Path) -> None:
        self.rollback = rollback
        self.seen: dict[str, dict] = {}

    def on_evaluate(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **_):
        kind = state.log_history[-1].get("scheduler/decision")
        if kind in ("KICK", "ROLLBACK") and kind not in self.seen:
            self.seen[kind] = {
                "step": state.global_step,
                "lr": [g["lr"] for g in optimizer.param_groups],
                "base_lrs": list(lr_scheduler.base_lrs),
                "point": self.rollback.is_file(),
                "weights": {k: v.clone() for k, v in model.state_dict().items()},
            }


def test_kick_changes_the_live_lr_and_a_rollback_restores_the_weights(tmp_path: Path) -> None:
    """A 1000× lr kick blows the memorized fit up; the policy rolls it back at once."""
    kick = Kick("lr_multiply", {"factor": 1000.0}, duration_steps=500)
    callback = GrokTrainerCallback(
        **FAST,
        interventions={"kicks": [kick], "max_kicks": 1, "cooldown": 0, "rollback_window": 0},
    )
    probe = Probe(tmp_path / "out" / "grok_rollback" / "rollback-rank0.pt")
    trainer = make_trainer(tmp_path, [callback, probe], max_steps=200, schedule="linear")
    trainer.train()

    def schedule(step: int) -> float:  # the Trainer's linear decay, unkicked
        return 1e-2 * (1 - step / 200)

    kicked, rolled = probe.seen["KICK"], probe.seen["ROLLBACK"]
    assert kicked["point"] and kicked["base_lrs"] == [pytest.approx(10.0)] * 2
    assert kicked["lr"] == [pytest.approx(1000 * schedule(kicked["step"]))] * 2
    logged = {e["step"]: e for e in trainer.state.log_history if "learning_rate" in e}
    # The schedule carried the kick on (not reset to 1e-2 × decay at its next step) …
    assert logged[rolled["step"]]["learning_rate"] == pytest.approx(
        1000 * schedule(rolled["step"] - 1)
    )
    assert logged[rolled["step"]]["loss"] > 1.0  # … and the memorized fit blew up
    # The rollback: the weights saved at the kick, the unkicked schedule, the point used up.
    for name, value in kicked["weights"].items():
        torch.testing.assert_close(rolled["weights"][name], value)
    assert rolled["base_lrs"] == [1e-2, 1e-2]
    assert rolled["lr"] == [pytest.approx(schedule(rolled["step"]))] * 2
    assert not probe.rollback.exists()
    assert logged[rolled["step"] + 5]["loss"] < 0.01  # training goes on from the memorized fit
    assert [r.action for r in callback.run.records] == ["apply"]
    final = callback.run.last_decision
    assert final.kind is DecisionKind.STOP and final.cause is Cause.NEVER_GROK


@pytest.mark.parametrize("room", [True, False])
def test_fresh_evidence_at_max_t_extends_the_run(tmp_path: Path, room: bool) -> None:
    """Weight decay 1 after memorization: the weight norm and the validation loss fall, which
    is transition evidence at max_t = 80, so the run is extended while it lasts. With the
    Trainer's max_steps at max_t + max_extension its loop has room for it; at max_t it has not,
    and the decision says so."""
    callback = GrokTrainerCallback(max_t=80, max_extension=40, predictor=False)
    trainer = make_trainer(tmp_path, [callback], max_steps=120 if room else 80, weight_decay=1.0)
    trainer.train()

    by_step = {e["step"]: e for e in evaluations(trainer)}
    assert by_step[75]["scheduler/decision"] == "CONTINUE"
    assert by_step[80]["scheduler/decision"] == "EXTEND"
    if room:
        final = callback.run.last_decision
        assert 80 < trainer.state.global_step == final.step <= 120
        assert final.kind is DecisionKind.STOP and final.cause is Cause.BUDGET
        assert trainer.state.max_steps == 120
    else:
        assert trainer.state.global_step == 80
        assert "the trainer's loop ends at step 80, before 120" in by_step[80]["scheduler/reason"]


# RESUMABLE's kick is in force from step 30 to 60; the interrupted run's last checkpoint is at 40.
CHECKPOINT = 40


class Interrupt(TrainerCallback):
    """Ends training right after the checkpoint at ``step``, as a preempted job would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **_):
        if state.global_step == self.step:
            control.should_training_stop = True


class Resumed(TrainerCallback):
    """What the scheduler holds when a resumed run begins (GrokTrainerCallback runs first)."""

    def __init__(self, grok: GrokTrainerCallback) -> None:
        self.grok = grok
        self.at_start: dict | None = None

    def on_train_begin(self, args, state, control, optimizer=None, **_):
        self.at_start = held(self.grok)
        self.at_start["lr"] = [g["lr"] for g in optimizer.param_groups]


def outline(trainer: Trainer) -> list[tuple]:
    """Each judged evaluation's step, decision and score, and the lr logged with the train loss."""
    keys = ("step", "scheduler/decision", "scheduler/reason", "scheduler/score", "learning_rate")
    return [
        tuple(e.get(k) for k in keys)
        for e in trainer.state.log_history
        if "loss" in e or "scheduler/decision" in e
    ]


def interrupted_run(tmp_path: Path) -> tuple[GrokTrainerCallback, Path]:
    callback = GrokTrainerCallback(**RESUMABLE)
    trainer = make_trainer(tmp_path, [callback, Interrupt(CHECKPOINT)], max_steps=400, save_steps=5)
    trainer.train()
    assert trainer.state.global_step == CHECKPOINT
    return callback, tmp_path / "out" / f"checkpoint-{CHECKPOINT}"


def test_resumed_run_goes_on_with_the_scheduler_state_of_its_checkpoint(tmp_path: Path) -> None:
    """The policy's memory, the kick budget used and the kick in force (its lr) survive a
    resume, and the resumed run decides as the uninterrupted one did, judging no step twice."""
    whole = GrokTrainerCallback(**RESUMABLE)
    uninterrupted = make_trainer(tmp_path / "whole", [whole], max_steps=400, save_steps=5)
    uninterrupted.train()
    first, checkpoint = interrupted_run(tmp_path / "parts")
    at_checkpoint = held(first)
    assert at_checkpoint["memorized_step"] is not None and at_checkpoint["kicks_used"] == 1
    assert at_checkpoint["kicks_in_force"]  # the kick's window runs past the checkpoint
    assert (checkpoint / STATE_FILE).is_file()

    callback = GrokTrainerCallback(**RESUMABLE)
    resumed = Resumed(callback)
    trainer = make_trainer(tmp_path / "parts", [callback, resumed], max_steps=400, save_steps=5)
    trainer.args.eval_on_start = True  # evaluates at the checkpoint's step again
    trainer.train(resume_from_checkpoint=str(checkpoint))

    lr_at_checkpoint = resumed.at_start.pop("lr")
    assert resumed.at_start == at_checkpoint
    assert lr_at_checkpoint == [pytest.approx(3e-2)] * 2  # the kicked lr, the kick in force
    assert callback.run.decisions == whole.run.decisions
    assert callback.run.decisions[-1].kind is DecisionKind.STOP
    # The log history through the resume: the repeated evaluation at the checkpoint's step is
    # not judged again.
    assert [e["step"] for e in evaluations(trainer)].count(CHECKPOINT) == 2
    assert outline(trainer) == outline(uninterrupted)


def test_a_run_resumed_inside_its_extension_keeps_it(tmp_path: Path) -> None:
    """The Trainer resets its step limit to ``args.max_steps`` on resume, which the callback
    cuts to max_t = 80; a run the policy had extended past it is extended again."""
    extending = {"max_t": 80, "max_extension": 40, "predictor": False}
    whole = GrokTrainerCallback(**extending)
    uninterrupted = make_trainer(
        tmp_path / "whole", [whole], max_steps=120, weight_decay=1.0, save_steps=5
    )
    uninterrupted.train()
    first = make_trainer(
        tmp_path / "parts",
        [GrokTrainerCallback(**extending), Interrupt(85)],
        max_steps=120,
        weight_decay=1.0,
        save_steps=5,
    )
    first.train()
    assert evaluations(first)[-1]["scheduler/decision"] == "EXTEND"

    callback = GrokTrainerCallback(**extending)
    trainer = make_trainer(
        tmp_path / "parts", [callback], max_steps=120, weight_decay=1.0, save_steps=5
    )
    trainer.train(resume_from_checkpoint=str(tmp_path / "parts" / "out" / "checkpoint-85"))
    assert trainer.state.global_step == uninterrupted.state.global_step > 85
    assert callback.run.decisions == whole.run.decisions


def test_resume_without_a_saved_state_warns_and_starts_afresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, checkpoint = interrupted_run(tmp_path)
    (checkpoint / STATE_FILE).unlink()  # a checkpoint saved by an older version
    callback = GrokTrainerCallback(**RESUMABLE)
    trainer = make_trainer(tmp_path, [callback], max_steps=400, save_steps=5)
    with caplog.at_level(logging.WARNING, logger="grokschedule.integrations"):
        trainer.train(resume_from_checkpoint=str(checkpoint))
    assert [r.message for r in caplog.records if "without a scheduler state" in r.message]
    assert callback.run.decisions[0].step == CHECKPOINT + 5  # a policy that saw nothing before


def test_a_corrupt_or_foreign_saved_state_is_a_clear_error(tmp_path: Path) -> None:
    """A truncated state, one made with other arguments, one of another run's checkpoint."""
    _, checkpoint = interrupted_run(tmp_path)
    state = checkpoint / STATE_FILE
    good = state.read_bytes()
    state.write_bytes(good[: len(good) // 2])  # truncated
    trainer = make_trainer(tmp_path, [GrokTrainerCallback(**RESUMABLE)], max_steps=400)
    with pytest.raises(ValueError, match=r"grok_state\.pt: not a readable grokschedule state"):
        trainer.train(resume_from_checkpoint=str(checkpoint))
    state.write_bytes(good)
    other = GrokTrainerCallback(**{**RESUMABLE, "patience_factor": 2.0})
    trainer = make_trainer(tmp_path, [other], max_steps=400)
    with pytest.raises(ValueError, match=r"other settings \(\['patience_factor'\]\)"):
        trainer.train(resume_from_checkpoint=str(checkpoint))
    # Another run's state at this step (here, the one saved 5 steps before): not this run's.
    state.write_bytes(
        (checkpoint.parent / f"checkpoint-{CHECKPOINT - 5}" / STATE_FILE).read_bytes()
    )
    trainer = make_trainer(tmp_path, [GrokTrainerCallback(**RESUMABLE)], max_steps=400)
    with pytest.raises(ValueError, match=r"last judged step is 35, .* 40; it belongs to another"):
        trainer.train(resume_from_checkpoint=str(checkpoint))


def test_missing_target_is_a_clear_error(tmp_path: Path) -> None:
    trainer = make_trainer(
        tmp_path, [GrokTrainerCallback(**FAST)], max_steps=20, compute_metrics=None
    )
    with pytest.raises(
        MissingMetricError, match=r"did not log the target 'eval_accuracy'.*compute_metrics"
    ):
        trainer.train()
    assert trainer.state.global_step == 5  # at the first evaluation


def test_bad_settings_fail_before_training(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="patience_factor must be > 0"):
        GrokTrainerCallback(patience_factor=0)
    trainer = make_trainer(tmp_path, [GrokTrainerCallback(max_t=500)], max_steps=100)
    with pytest.raises(ValueError, match=r"max_t \(500\) is beyond the trainer's max_steps"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_every_argument_reaches_the_settings() -> None:
    assert_settings_are_schedulers(GrokTrainerCallback)


def test_defaults_are_grokschedulers() -> None:
    from grokschedule.adapters.scheduler import GrokScheduler

    for interventions in (None, True):
        callback = GrokTrainerCallback(interventions=interventions)
        scheduler = GrokScheduler("eval_accuracy", "max", interventions=interventions)
        assert callback.settings.config(20_000) == scheduler.policy.config


@pytest.mark.slow
def test_decisions_reach_the_trainers_mlflow_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through Hugging Face's own MLflowCallback (report_to=['mlflow']) on a real server."""
    mlflow = pytest.importorskip("mlflow")
    from mlflow_helpers import MlflowServer

    (tmp_path / "mlflow").mkdir()
    server = MlflowServer(tmp_path / "mlflow")
    server.start()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "hf-callback")
        callback = GrokTrainerCallback(**FAST)
        trainer = make_trainer(tmp_path, [callback], max_steps=400, report_to=["mlflow"])
        trainer.train()

        client = mlflow.MlflowClient(server.uri)
        [run] = client.search_runs([client.get_experiment_by_name("hf-callback").experiment_id])
        tags = run.data.tags
        stop = callback.run.last_decision
        assert tags["grok.category"] == "stopped" and tags["grok.final_phase"] == "stalled"
        assert tags["grok.verdict"] == f"STOP: {stop.reason}"
        assert tags["grok.last_decision"] == f"STOP @ {stop.step:.0f}: {stop.reason}"
        scores = client.get_metric_history(run.info.run_id, "scheduler/score")
        assert [m.step for m in scores] == list(range(5, int(stop.step) + 1, 5))
        assert client.get_metric_history(run.info.run_id, "weight_norm")
        assert "eval_accuracy" in run.data.metrics  # the Trainer's own logging, same run
        path = client.download_artifacts(run.info.run_id, "grok/decisions.json", str(tmp_path))
        records = json.loads(Path(path).read_text())
        assert records[-1]["kind"] == "STOP" and records[-1]["reason"] == stop.reason
    finally:
        server.stop()
