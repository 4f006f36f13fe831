"""One rank of a 2-worker ZeRO-2 DeepSpeed trial SIGKILLed mid-run, under Tune and Ray Train V2
(FailureConfig max_failures=1), on a local 2-CPU Ray cluster with gloo.

The driver posts three commands through the live control channel, each once the trial has
acknowledged the one before: an lr kick with a window, a batch-size kick, then a rollback of the
batch-size kick. Rank 0 takes the rollback from the channel, holds it unapplied until a report
has followed the last checkpoint, and is then killed (SIGKILL, by itself). Train restarts both
workers from that checkpoint, so steps repeat; the run must carry on with the control state of
that checkpoint and apply the rollback exactly once, and GrokScheduler must see every step once.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from ray import tune
from ray.tune.experiment import Trial

from grokschedule.adapters.control_channel import ControlChannel
from grokschedule.adapters.trainables.deepspeed import make_trainable
from grokschedule.adapters.trainables.train_loop import ChannelCommands
from grokschedule.core.commands import Command, SweepKey
from grokschedule.core.kicks import Kick
from tune_plugins import GrokScheduler

pytestmark = pytest.mark.slow

LR, EVAL_EVERY, WINDOW, MAX_STEPS = 3e-3, 10, 80, 150
SPACE = {
    "p": 23,
    "embed_dim": 32,
    "hidden_dim": 64,
    "num_workers": 2,
    "cpus_per_worker": 0.5,  # two workers and the trial fit on two CPUs
    "zero_stage": 2,
    "batch_size": 32,
    "micro_batch_size": 16,
    "lr": LR,
    "max_steps": MAX_STEPS,
    "eval_every": EVAL_EVERY,
    "poll_every": 5,
    "checkpoint_every": 1000,  # only the reports that acknowledge a command checkpoint
    "num_to_keep": 2,
    "max_failures": 1,
    "worker_start_timeout_s": 30,
    "controller_failure_limit": 0,
}
KICKS = [
    {"type": "kick", "kick": Kick("lr_multiply", {"factor": 0.5}, WINDOW).to_dict()},
    {"type": "kick", "kick": Kick("batch_size", {"factor": 2}).to_dict()},
    {"type": "rollback"},
]
KILL_ID = 2  # the rollback


class KillOnTake(ChannelCommands):
    """Rank 0's channel commands. Once the channel has handed it command ``KILL_ID``, and a
    report has come after the checkpoint that acknowledged the command before it (so the
    restarted ranks repeat a step), it writes its pid and step to ``marker`` and SIGKILLs its
    own process: the command has left the channel but was never applied or acknowledged."""

    def __init__(self, trial_id: str, key: SweepKey, marker: Path) -> None:
        super().__init__(trial_id, key)
        self.marker = marker
        self.before_kill_at: int | None = None  # the step command KILL_ID - 1 was handed at
        self.held = False

    def __call__(self, step: int) -> list[Any]:
        commands = super().__call__(step)
        ids = [c.id for c in commands if isinstance(c, Command)]
        if KILL_ID - 1 in ids:
            self.before_kill_at = step
        self.held = self.held or KILL_ID in ids
        if self.held and not self.marker.exists():
            assert self.before_kill_at is not None
            acknowledged = (self.before_kill_at // EVAL_EVERY + 1) * EVAL_EVERY  # checkpointed
            if step >= acknowledged + EVAL_EVERY:
                self.marker.write_text(json.dumps({"pid": os.getpid(), "step": step}))
                os.kill(os.getpid(), signal.SIGKILL)
            return [c for c in commands if not (isinstance(c, Command) and c.id == KILL_ID)]
        return commands


class Poster(tune.Callback):
    """The scheduler's part on the driver: posts ``KICKS[i]`` once command ``i - 1`` is
    acknowledged; keeps every result as Tune passed it on."""

    def __init__(self) -> None:
        self.channel = ControlChannel()
        self.rows: list[dict[str, Any]] = []
        self.posted = -1

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        self.rows.append(dict(result))
        if self.posted < len(KICKS) - 1 and result["control/acked_id"] == self.posted:
            self.posted += 1
            self.channel.post(trial.trial_id, {"id": self.posted, **KICKS[self.posted]})


@pytest.fixture(scope="module")
def killed_run(local_ray, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("rank_kill")
    marker = root / "killed.json"
    poster = Poster()
    key = poster.channel.key
    scheduler = GrokScheduler(
        metric="val_acc",
        mode="max",
        max_t=MAX_STEPS,
        max_extension=0,
        min_patience=10_000,
        stop_on_grok=False,
        predictor=False,
    )
    trainable = make_trainable(commands=lambda trial_id: KillOnTake(trial_id, key, marker))
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 0.01}),
        param_space=SPACE,
        tune_config=tune.TuneConfig(scheduler=scheduler),
        run_config=tune.RunConfig(storage_path=str(root), verbose=0, callbacks=[poster]),
    )
    logs: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: logs.append(record.getMessage())  # type: ignore[method-assign]
    scheduler_logger = logging.getLogger("grokschedule.adapters.scheduler")
    scheduler_logger.addHandler(handler)
    scheduler_logger.setLevel(logging.INFO)
    try:
        [result] = tuner.fit()
    finally:
        scheduler_logger.removeHandler(handler)
    killed = json.loads(marker.read_text()) if marker.exists() else None
    return {
        "result": result,
        "rows": poster.rows,
        "killed": killed,
        "scheduler": scheduler,
        "logs": logs,
    }


def test_a_killed_rank_resumes_from_the_last_checkpoint_with_its_control_state(
    killed_run: dict[str, Any],
) -> None:
    result, rows, killed = killed_run["result"], killed_run["rows"], killed_run["killed"]
    assert result.error is None and killed is not None
    with pytest.raises(ProcessLookupError):
        os.kill(killed["pid"], 0)  # that worker is gone
    steps = [row["step"] for row in rows]
    (resume,) = [i for i in range(1, len(rows)) if steps[i] <= steps[i - 1]]  # one restart
    before, after = rows[:resume], rows[resume:]
    assert [row["control/acked_id"] == KILL_ID for row in rows] == [False] * resume + [True] * (
        len(rows) - resume
    )
    assert steps[resume - 1] < killed["step"] + EVAL_EVERY  # killed before its next report
    assert [r["step"] for r in after] == list(range(steps[resume], MAX_STEPS + 1, EVAL_EVERY))

    # Resumed, on every rank (the ranks agree on a checkpoint or none), from the last one.
    checkpoint = [row for row in before if row.get("checkpoint_path")][-1]
    assert after[0]["step"] == checkpoint["step"] + EVAL_EVERY
    assert after[0]["training_iteration"] > before[-1]["training_iteration"]  # same Tune run

    # The control state at that checkpoint: both kicks in force, the batch kick acknowledged
    # (and the rollback point taken before it, which the rollback below needs); the rollback
    # itself never acknowledged before the kill.
    assert checkpoint["control/acked_id"] == 1 and checkpoint["control/kicks_active"] == 2
    assert checkpoint["batch_size"] == 64 and checkpoint["lr"] == pytest.approx(LR / 2)
    assert all(row["control/acked_id"] < KILL_ID for row in before)
    kick_at = {r["control/acked_id"]: r["control/applied_step"] for r in before}
    lr_kick, batch_kick = kick_at[0], kick_at[1]

    # After the restart the rollback arrives once more and is applied once, at the resumed
    # step: back to the point before the batch kick, the lr kick still in force with its window
    # moved by the steps rolled back. Nothing refused, nothing applied twice.
    rolled_at = checkpoint["step"]
    window_end = lr_kick + WINDOW + (rolled_at - batch_kick)
    assert window_end < MAX_STEPS
    for row in after:
        assert row["control/acked_id"] == KILL_ID and row["control/rollbacks"] == 1, row
        assert row["control/applied_step"] == rolled_at and row["control/refused"] == 0
        assert row["batch_size"] == 32
        in_window = row["step"] < window_end
        assert row["control/kicks_active"] == int(in_window), (row["step"], window_end)
        assert row["lr"] == pytest.approx(LR / 2 if in_window else LR), (row["step"], window_end)
    assert all(row["control/refused"] == 0 for row in before)


def test_the_scheduler_sees_each_step_of_the_killed_trial_once(killed_run: dict[str, Any]) -> None:
    scheduler, result = killed_run["scheduler"], killed_run["result"]
    trial_id = result.metrics["trial_id"]
    detector = scheduler.policy.trial(trial_id).detector
    assert detector.results == MAX_STEPS // EVAL_EVERY and detector.step == MAX_STEPS
    log = scheduler.decision_log(trial_id)
    assert [d.step for d in log] == sorted({d.step for d in log})
    assert log[-1].kind.value == "STOP" and log[-1].reason.startswith("budget")
    (outcome,) = scheduler.summary().trials
    assert outcome.trial_id == trial_id and outcome.error is None
    steps = [row["step"] for row in killed_run["rows"]]
    (resume,) = [i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]]
    (note,) = [m for m in killed_run["logs"] if "resumed at step" in m]  # once, not per result
    assert note.startswith(
        f"GrokScheduler: trial {trial_id} resumed at step {steps[resume]}, before its last "
        f"result at step {steps[resume - 1]}; its results up to step {steps[resume - 1]} are "
        "ignored"
    )
