"""Faults: broken checkpoints, a killed worker, a diverging kick, a crashing trainable.

The Ray tests run real Tune sweeps on a local cluster with small modular tasks (p=23, MLP
32/128), each well under a minute on two cores.
"""

from __future__ import annotations

import math
import os
import re
import signal
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ray import tune
from ray.train import Checkpoint
from ray.tune.experiment import Trial

from grokschedule.adapters.trainables.modular import STATE_FILE, modular_trainable
from grokschedule.bench.replay_trainable import replay_trainable
from grokschedule.core.kicks import LR_MULTIPLY, Kick
from grokschedule.training import checkpoints
from grokschedule.training.checkpoints import CheckpointFallbackWarning, CorruptCheckpointError
from tune_plugins import GrokCallback, GrokScheduler

CURVES = str(Path(__file__).parent / "data" / "recorded_curves.json")
SMALL = {"p": 23, "embed_dim": 32, "hidden_dim": 128, "train_fraction": 0.5, "eval_every": 25}


# -- checkpoint files: integrity and fallback (no Ray cluster needed) ----------------------------


def _trial_dir_with_checkpoints(root: Path, count: int) -> list[Path]:
    """``count`` sealed checkpoints ``checkpoint_00000i`` whose state file holds ``i``."""
    directories = []
    for index in range(count):
        directory = root / f"checkpoint_{index:06d}"
        directory.mkdir(parents=True)
        checkpoints.write_file(directory / "state.txt", lambda f, i=index: f.write(b"%d" % i))
        checkpoints.seal(directory)
        directories.append(directory)
    return directories


def _read_state(directory: Path) -> int:
    return int((directory / "state.txt").read_text())


def test_a_sealed_checkpoint_verifies_and_any_damage_is_named(tmp_path: Path) -> None:
    (directory,) = _trial_dir_with_checkpoints(tmp_path, 1)
    assert checkpoints.verify(directory) is True
    (directory / "state.txt").write_bytes(b"9")  # same size, other bytes
    with pytest.raises(CorruptCheckpointError, match=r"state\.txt does not match its sha256"):
        checkpoints.verify(directory)
    (directory / "state.txt").write_bytes(b"")
    with pytest.raises(CorruptCheckpointError, match=r"state\.txt has 0 bytes, expected 1"):
        checkpoints.verify(directory)
    (directory / "state.txt").unlink()
    with pytest.raises(CorruptCheckpointError, match=r"state\.txt is missing"):
        checkpoints.verify(directory)
    (directory / checkpoints.MANIFEST).unlink()
    assert checkpoints.verify(directory) is False  # no manifest: unverifiable, not broken


@settings(max_examples=60, deadline=None)
@given(
    payload=st.binary(min_size=1, max_size=256),
    damage=st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 255), st.integers(1, 255)),
        st.tuples(st.just("cut"), st.integers(0, 255), st.just(0)),
        st.tuples(st.just("append"), st.integers(1, 64), st.just(0)),
    ),
)
def test_any_damage_to_a_sealed_file_is_detected(payload: bytes, damage: tuple) -> None:
    kind, at, value = damage
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "state.bin"
        checkpoints.write_file(path, lambda f: f.write(payload))
        checkpoints.seal(Path(directory))
        data = bytearray(payload)
        if kind == "flip":
            data[at % len(data)] ^= value
        elif kind == "cut":
            del data[at % len(data) :]
        else:
            data += b"\0" * at
        path.write_bytes(bytes(data))
        with pytest.raises(CorruptCheckpointError, match=r"state\.bin"):
            checkpoints.verify(Path(directory))


def test_write_file_leaves_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = tmp_path / "state.bin"
    checkpoints.write_file(path, lambda f: f.write(b"old"))

    def fail_half_way(file: Any) -> None:
        file.write(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        checkpoints.write_file(path, fail_half_way)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]  # no temporary left behind


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_with_a_warning(
    tmp_path: Path,
) -> None:
    directories = _trial_dir_with_checkpoints(tmp_path, 3)
    (directories[2] / "state.txt").write_bytes(b"")  # truncated latest
    (tmp_path / "checkpoint_000003").mkdir()  # an upload cut short, never registered: ignored
    with pytest.warns(CheckpointFallbackWarning) as caught:
        state = checkpoints.load_valid(Checkpoint(str(directories[2])), _read_state)
    assert state == 1
    (message,) = [str(w.message) for w in caught]
    assert "checkpoint_000002" in message and "state.txt has 0 bytes" in message
    assert "resumed from the previous valid checkpoint" in message
    assert message.endswith("checkpoint_000001")


def test_a_load_that_raises_counts_as_broken_even_without_a_manifest(tmp_path: Path) -> None:
    directories = _trial_dir_with_checkpoints(tmp_path, 2)
    (directories[1] / checkpoints.MANIFEST).unlink()
    (directories[1] / "state.txt").write_bytes(b"garbage")
    with pytest.warns(CheckpointFallbackWarning, match="ValueError: invalid literal"):
        assert checkpoints.load_valid(Checkpoint(str(directories[1])), _read_state) == 0


def test_no_usable_checkpoint_starts_from_scratch_with_a_warning(tmp_path: Path) -> None:
    directories = _trial_dir_with_checkpoints(tmp_path, 2)
    for directory in directories:
        (directory / "state.txt").unlink()
    with pytest.warns(CheckpointFallbackWarning, match="starting from scratch") as caught:
        assert checkpoints.load_valid(Checkpoint(str(directories[1])), _read_state) is None
    message = str(caught[0].message)
    assert "checkpoint_000001" in message and "checkpoint_000000" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert checkpoints.load_valid(None, _read_state) is None  # first start: silent


# -- a worker process killed mid-trial, with and without a corrupt latest checkpoint -------------


class _KillWorker(tune.Callback):
    """At a trial's first result at or past ``kill_at``: truncate its latest checkpoint's state
    file if its config says ``corrupt``, then SIGKILL the worker process that reported it (Tune
    puts the reporting process's ``pid`` in every result). Keeps what the scheduler knew."""

    def __init__(self, scheduler: GrokScheduler, kill_at: int) -> None:
        self.scheduler = scheduler
        self.kill_at = kill_at
        self.steps: dict[str, list[int]] = {}
        self.killed: dict[str, dict[str, Any]] = {}

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        trial_id = trial.trial_id
        self.steps.setdefault(trial_id, []).append(int(result["step"]))
        if trial_id in self.killed or result["step"] < self.kill_at:
            return
        state_file = Path(trial.checkpoint.path) / STATE_FILE
        saved_step = torch.load(state_file, weights_only=False)["step"]
        if trial.config["corrupt"]:
            data = state_file.read_bytes()
            state_file.write_bytes(data[: len(data) // 2])
        detector = self.scheduler.policy.trial(trial_id).detector
        self.killed[trial_id] = {
            "at": len(self.steps[trial_id]),
            "step": int(result["step"]),
            "checkpoint_step": saved_step,
            "changes": list(detector.changes),
            "memorized_step": detector.memorized_step,
            "log": self.scheduler.decision_log(trial_id),
        }
        os.kill(int(result["pid"]), signal.SIGKILL)


@pytest.fixture(scope="module")
def killed_sweep(local_ray, tmp_path_factory) -> dict[str, Any]:
    """Two memorizing trials, each with its worker killed at step 325 once; one of them also
    has its latest checkpoint truncated before the kill."""
    # Neither patience nor the predictor may stop them: both must run to max_t through the kill.
    scheduler = GrokScheduler(
        metric="val_acc", mode="max", max_t=500, min_patience=10_000, predictor=False
    )
    killer = _KillWorker(scheduler, kill_at=325)
    config = {**SMALL, "weight_decay": 0.0, "max_steps": 500, "checkpoint_every": 50}
    tuner = tune.Tuner(
        modular_trainable,
        param_space={**config, "corrupt": tune.grid_search([False, True])},
        tune_config=tune.TuneConfig(scheduler=scheduler),
        run_config=tune.RunConfig(
            storage_path=str(tmp_path_factory.mktemp("kill")),
            failure_config=tune.FailureConfig(max_failures=2),
            callbacks=[GrokCallback(scheduler), killer],
            verbose=0,
        ),
    )
    results = tuner.fit()
    return {"results": results, "scheduler": scheduler, "killer": killer}


@pytest.mark.slow
def test_a_killed_worker_resumes_from_its_checkpoint_and_the_scheduler_keeps_its_history(
    killed_sweep: dict[str, Any],
) -> None:
    scheduler, killer = killed_sweep["scheduler"], killed_sweep["killer"]
    results = killed_sweep["results"]
    assert [r.error for r in results] == [None, None]
    assert len(killer.killed) == 2  # both workers were killed once, and both trials finished
    for result in results:
        trial_id = result.metrics["trial_id"]
        killed = killer.killed[trial_id]
        steps = killer.steps[trial_id]
        resumed = steps[killed["at"]]  # the first step reported by the restarted worker
        # From its last checkpoint (or, corrupted, the one before): not from 0, not skipping.
        expected = killed["checkpoint_step"] + 25 - (50 if result.config["corrupt"] else 0)
        assert resumed == expected and 0 < resumed <= killed["step"], (steps, killed)
        assert result.metrics["step"] == 500 and max(steps) == 500
        # One continuous history: everything known at the kill is still the start of it.
        detector = scheduler.policy.trial(trial_id).detector
        assert detector.memorized_step == killed["memorized_step"] is not None
        assert detector.changes[: len(killed["changes"])] == killed["changes"]
        log = scheduler.decision_log(trial_id)
        assert log[: len(killed["log"])] == killed["log"]
        assert [d.step for d in log] == sorted(d.step for d in log)
        assert log[-1].kind.value == "STOP" and log[-1].reason.startswith("budget")
    summary = scheduler.summary()
    assert sorted(t.trial_id for t in summary.trials) == sorted(killer.killed)
    assert all(t.error is None for t in summary.trials)
    assert summary.steps_used == 2 * 500  # each counted once, to its last step


# -- a kick that diverges ----------------------------------------------------------------------


class _Collect(tune.Callback):
    """Every result as the console sees it, after GrokCallback annotated it."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        self.rows.append(dict(result))


@pytest.mark.slow
def test_a_kick_that_makes_the_loss_non_finite_is_rolled_back_and_the_trial_ends(
    local_ray, tmp_path: Path
) -> None:
    # The only kick allowed multiplies lr by 1e30: AdamW's first steps then overflow float32.
    scheduler = GrokScheduler(
        metric="val_acc",
        mode="max",
        max_t=600,
        min_patience=200,
        patience_factor=1.0,
        interventions={
            "kicks": [Kick(LR_MULTIPLY, {"factor": 1e30}, duration_steps=1000)],
            "max_kicks": 1,
            "kick_at": 0.1,
        },
    )
    collect = _Collect()
    config = {**SMALL, "weight_decay": 0.0, "max_steps": 600, "control": True}
    tuner = tune.Tuner(
        modular_trainable,
        param_space=config,
        tune_config=tune.TuneConfig(scheduler=scheduler),
        run_config=tune.RunConfig(
            storage_path=str(tmp_path), callbacks=[GrokCallback(scheduler), collect], verbose=0
        ),
    )
    (result,) = tuner.fit()
    assert result.error is None
    kinds = [row["scheduler/decision"] for row in collect.rows]
    kick = kinds.index("KICK")
    rollback = kinds.index("ROLLBACK")
    assert kick < rollback
    diverged = collect.rows[rollback]
    assert not math.isfinite(diverged["train_loss"]), diverged["train_loss"]
    assert "lr_multiply kick at step" in diverged["scheduler/reason"]
    assert diverged["scheduler/reason"].endswith("diverged")
    # The rollback is applied before the next step: every later result is finite again, and
    # the trial is stopped on its own terms (never-grok or budget), not left running.
    after = collect.rows[rollback + 1 :]
    assert after and all(math.isfinite(row["train_loss"]) for row in after)
    assert after[0]["control/rollbacks"] == 1
    assert after[-1]["scheduler/decision"] == "STOP"
    assert after[-1]["step"] <= 600
    (outcome,) = scheduler.summary().trials
    assert (outcome.kicks, outcome.rollbacks) == (1, 1)


# -- a trainable that crashes --------------------------------------------------------------------


def _crash_or_replay(config: dict[str, Any]) -> None:
    """Raises before its first report when ``config["crash"]``; else replays a recorded curve."""
    if config["crash"]:
        raise RuntimeError("broken trainable: crashed before its first report")
    replay_trainable(config)


@pytest.mark.slow
def test_a_trainable_that_crashes_at_once_errors_alone_and_is_named(
    local_ray, tmp_path: Path
) -> None:
    scheduler = GrokScheduler(metric="val_acc", mode="max", max_t=3000)
    tuner = tune.Tuner(
        _crash_or_replay,
        param_space={
            "curve_file": CURVES,
            "curve": "grokker_p47_wd1",
            "checkpoint_every": 0,
            "crash": tune.grid_search([False, True, False]),
        },
        tune_config=tune.TuneConfig(scheduler=scheduler),
        run_config=tune.RunConfig(
            storage_path=str(tmp_path), callbacks=[GrokCallback(scheduler)], verbose=0
        ),
    )
    results = tuner.fit()
    crashed = [r for r in results if r.config["crash"]]
    healthy = [r for r in results if not r.config["crash"]]
    assert len(crashed) == 1 and "crashed before its first report" in str(crashed[0].error)
    assert all(r.error is None and r.metrics["scheduler/phase"] == "grokked" for r in healthy)
    summary = scheduler.summary()
    assert len(summary.trials) == 3
    (errored,) = [t for t in summary.trials if t.error is not None]
    assert errored.last.startswith("error: ") and "error.txt" in errored.last
    assert errored.trial_id in summary.render()


def _no_target(config: dict[str, Any]) -> None:
    tune.report({"step": 1, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0, "accuracy": 0.1})


def test_a_trainable_without_the_target_metric_is_named_with_the_missing_key(
    local_ray, tmp_path: Path
) -> None:
    """The target is checked by Tune itself before any scheduler sees the result (strict metric
    checking); the sweep fails with the metric's name and the result, trial id included. A
    missing contract metric is GrokScheduler's own error (tests/test_tune_integration.py)."""
    scheduler = GrokScheduler(metric="val_acc", mode="max", max_t=10, weight_norm=None)
    tuner = tune.Tuner(
        _no_target,
        tune_config=tune.TuneConfig(scheduler=scheduler),
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
    )
    with pytest.raises(
        Exception, match=r"did not include the specified metric\(s\) `val_acc`"
    ) as caught:
        tuner.fit()
    assert re.search(r"'trial_id': '\w+_00000'", str(caught.value))
