"""The DeepSpeed trainer under Ray Tune with GrokScheduler, on a local 2-CPU Ray cluster:
two Train V2 workers in one trial (ZeRO-2, gloo), live kicks, checkpoints, release of the
workers when the scheduler stops the trial, and resuming the stopped run from its checkpoint."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import ray
from conftest import DEEPSPEED_TRIAL
from ray import tune
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, UserCallback
from ray.train.torch import TorchTrainer
from ray.util.placement_group import placement_group_table

from grokschedule.adapters.control_channel import CONTROL_KEY, ControlChannel
from grokschedule.adapters.trainables.commands import ScriptedCommands
from grokschedule.adapters.trainables.deepspeed import TRAIN_RUN_NAME, make_trainable
from grokschedule.adapters.trainables.train_loop import train_loop_per_worker
from grokschedule.core.kicks import Kick
from grokschedule.training.deepspeed.engine import STATE_FILE
from tune_plugins import GrokScheduler

pytestmark = pytest.mark.slow

SPACE = {
    **DEEPSPEED_TRIAL,
    "lr": 3e-3,
    "max_steps": 100,
    "eval_every": 10,
    "checkpoint_every": 20,
    "num_to_keep": 2,
    "worker_start_timeout_s": 30,
    "controller_failure_limit": 0,
}


class ReportLog(UserCallback):
    """Appends rank 0's reports to a file: what a Train run reported, outside Tune."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def after_report(self, run_context, metrics, checkpoint) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(metrics[0]) + "\n")


def wait_for_all_cpus(timeout_s: float) -> float:
    started = time.monotonic()
    while ray.available_resources().get("CPU", 0.0) < 2.0:
        assert time.monotonic() - started < timeout_s, (
            f"CPUs not released after {timeout_s} s: {ray.available_resources()}, "
            f"placement groups {placement_group_table()}"
        )
        time.sleep(0.2)
    return time.monotonic() - started


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    return [run_dir / r["checkpoint_dir_name"] for r in snapshot["checkpoint_results"]]


def test_stopped_trial_frees_its_workers_and_its_run_resumes(
    local_ray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = ScriptedCommands(
        {
            10: [Kick("lr_multiply", {"factor": 0.5}, duration_steps=15)],
            20: [Kick("batch_size", {"factor": 2})],
        }
    )
    trainable = make_trainable(commands=lambda trial_id: script)
    scheduler = GrokScheduler(
        metric="val_acc", mode="max", time_attr="step", max_t=40, max_extension=0
    )
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 0.01}),
        param_space=SPACE,
        tune_config=tune.TuneConfig(scheduler=scheduler),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "ray_results"), verbose=0),
    )
    [result] = tuner.fit()

    # The scheduler saw every report and stopped the trial mid-run, at its budget or earlier.
    assert result.error is None
    history = result.metrics_dataframe
    steps = list(history["step"])
    assert steps == list(range(10, steps[-1] + 1, 10)) and steps[-1] <= 40
    contract = ["train_loss", "train_acc", "val_loss", "val_acc", "weight_norm"]
    assert history[[*contract, "grok/val_correct_prob", "grok/zero_loss_share"]].notna().all().all()
    assert scheduler.last_decision(result.metrics["trial_id"]).kind.name == "STOP"
    by_step = history.set_index("step")
    if 20 in by_step.index:  # kicks applied between steps, on the live engine
        assert by_step.loc[20, "lr"] == pytest.approx(1.5e-3)
        assert by_step.loc[20, "batch_size"] == 32
    if 30 in by_step.index:
        assert by_step.loc[30, "lr"] == pytest.approx(3e-3)  # window of 15 steps ended at 25
        assert by_step.loc[30, "batch_size"] == 64

    # Stopping the trial released its two workers: all CPUs come back, no group is left.
    released_s = wait_for_all_cpus(timeout_s=20)
    assert all(g["state"] == "REMOVED" for g in placement_group_table().values()), released_s

    # The trial's Train run keeps its last num_to_keep DeepSpeed checkpoints (Train's record;
    # a checkpoint uploaded by the workers while the trial was being stopped is not in it).
    run_dir = Path(result.path) / TRAIN_RUN_NAME
    kept = checkpoint_dirs(run_dir)
    assert len(kept) == 2 and all(d.is_dir() for d in kept)
    saved = json.loads((kept[-1] / STATE_FILE).read_text())
    assert saved["step"] >= 20 and (kept[-1] / "checkpoint").is_dir()

    # ...and the same RunConfig (what a Tune retry or Tuner.restore builds) resumes it from the
    # latest one, on the CPUs the stopped trial gave back, with the batch kick still in force.
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "30")
    log = tmp_path / "reports.jsonl"
    end = saved["step"] + 20
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**SPACE, "max_steps": end},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(
            name=TRAIN_RUN_NAME,
            storage_path=str(result.path),
            callbacks=[ReportLog(log)],
            failure_config=FailureConfig(controller_failure_limit=0),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    resumed = trainer.fit()
    reports = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in reports] == [saved["step"] + 10, end]
    assert all(r["batch_size"] == 64 for r in reports)
    assert json.loads((Path(resumed.checkpoint.path) / STATE_FILE).read_text())["step"] == end
    assert len(checkpoint_dirs(run_dir)) == 2
    wait_for_all_cpus(timeout_s=20)


class CommandPoster(tune.Callback):
    """Plays the scheduler's part on the driver: a kick (by default a harmful one) once the trial
    reports, then a rollback once the trainer has acknowledged the kick."""

    def __init__(self, kick: Kick | None = None) -> None:
        self.channel = ControlChannel()
        self.posted: list[int] = []
        self.kick = kick or Kick("lr_multiply", {"factor": 1000.0}, duration_steps=1000)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        acked = result.get("control/acked_id")
        if not self.posted:
            kick = self.kick
            self.channel.post(trial.trial_id, {"id": 0, "type": "kick", "kick": kick.to_dict()})
            self.posted.append(0)
        elif self.posted == [0] and acked == 0:
            self.channel.post(trial.trial_id, {"id": 1, "type": "rollback"})
            self.posted.append(1)


def test_channel_commands_reach_every_rank_and_are_acknowledged(local_ray, tmp_path: Path) -> None:
    poster = CommandPoster()
    tuner = tune.Tuner(
        tune.with_resources(make_trainable(), {"cpu": 0.01}),
        param_space={
            **SPACE,
            "control": True,
            "max_steps": 80,
            "checkpoint_every": 40,
            "probe_every": 20,  # the scheduled trainer probes, decided by rank 0 for both
            CONTROL_KEY: poster.channel.key,  # what GrokScheduler(interventions=...) adds
        },
        run_config=tune.RunConfig(
            storage_path=str(tmp_path / "ray_results"), verbose=0, callbacks=[poster]
        ),
    )
    [result] = tuner.fit()
    assert result.error is None and poster.posted == [0, 1]
    history = result.metrics_dataframe.set_index("step")
    assert (history["control/acked_id"].iloc[0], history["control/rollbacks"].iloc[0]) == (-1, 0)
    kicked = history[history["control/acked_id"] == 0]
    assert len(kicked) >= 1 and kicked["lr"].tolist() == pytest.approx([3.0] * len(kicked))
    applied = int(kicked["control/applied_step"].iloc[0])
    assert applied % SPACE["eval_every"] == 0  # polled every poll_every=10 steps, between steps
    rolled = history[history["control/acked_id"] == 1]
    assert len(rolled) >= 1 and (rolled["control/rollbacks"] == 1).all()
    assert rolled["lr"].tolist() == pytest.approx([3e-3] * len(rolled))
    assert (rolled["control/kicks_active"] == 0).all()
    assert list(history.index) == list(range(10, 81, 10))  # steps stay monotone
    probed = history[history["grok/probe_ms"].notna()]
    assert 20 in probed.index and (probed["grok/probe_interval"] >= 20).all()
    assert (probed["grok/group_norm/embeddings"] > 0).all()


def test_a_lora_rank_kick_reaches_the_lm_engine_live_and_its_rollback_restores_the_rank(
    local_ray, tmp_path: Path
) -> None:
    pytest.importorskip("peft")
    poster = CommandPoster(Kick("lora_rank", {"factor": 4}))
    space = {
        "task": "lm",
        "lm_p": 11,
        "lm_hidden": 32,
        "lm_layers": 1,
        "lm_lora_rank": 8,
        "num_workers": 1,
        "cpus_per_worker": 1,
        "zero_stage": 2,
        "batch_size": 16,
        "micro_batch_size": 8,
        "lr": 1e-3,
        "max_steps": 80,
        "eval_every": 10,
        "checkpoint_every": 40,
        "worker_start_timeout_s": 30,
        "controller_failure_limit": 0,
        "control": True,
        CONTROL_KEY: poster.channel.key,
    }
    tuner = tune.Tuner(
        tune.with_resources(make_trainable(), {"cpu": 0.01}),
        param_space=space,
        run_config=tune.RunConfig(
            storage_path=str(tmp_path / "ray_results"), verbose=0, callbacks=[poster]
        ),
    )
    [result] = tuner.fit()
    assert result.error is None and poster.posted == [0, 1]
    history = result.metrics_dataframe.set_index("step")
    assert (history["control/lora_rank_limit"] == 32).all()
    ranks = history.groupby("control/acked_id")["control/lora_rank"].agg(set).to_dict()
    assert ranks == {-1: {8}, 0: {32}, 1: {8}}  # grown by the kick, back by the rollback
    assert history["control/rollbacks"].iloc[-1] == 1
