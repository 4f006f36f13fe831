"""One rank of a 2-worker ZeRO-2 DeepSpeed trial SIGKILLed mid-run, under Tune and Ray Train V2
(FailureConfig max_failures=1), on a local 2-CPU Ray cluster with gloo.

The driver posts three commands through the live control channel, each once the trial has
acknowledged the one before: an lr kick with a window, a batch-size kick, then a rollback of the
batch-size kick. Rank 0 takes the rollback from the channel, holds it unapplied, reports once
more and waits; the driver SIGKILLs that worker once Tune has passed it both the checkpoint that
acknowledged the batch kick (its directory in the trial's storage) and the report after it.
Train restarts both workers from that checkpoint, so steps repeat; the run must carry on with
the control state of that checkpoint and apply the rollback exactly once, and GrokScheduler must
see every step once.

Everything waits on events, not on time: rank 0 takes command ``i`` at step ``TAKE_AT[i]``
(waiting there until the driver has posted it), so the steps of the kicks, the checkpoint and
the kill are the same however slow the machine; the waits are bounded by ``WAIT_S``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import DEEPSPEED_TRIAL
from ray import tune
from ray.tune.experiment import Trial

from grokschedule.adapters.control_channel import ControlChannel
from grokschedule.adapters.trainables.commands import ChannelCommands
from grokschedule.adapters.trainables.deepspeed import make_trainable
from grokschedule.core.commands import Command, SweepKey
from grokschedule.core.kicks import Kick
from grokschedule.training.deepspeed.engine import TAG
from tune_plugins import GrokScheduler

pytestmark = pytest.mark.slow

LR, EVAL_EVERY, POLL_EVERY, WINDOW, MAX_STEPS = 3e-3, 5, 5, 12, 20
WAIT_S = 180.0  # the longest any event may take on a loaded 2-core machine
SPACE = {
    **DEEPSPEED_TRIAL,
    "lr": LR,
    "max_steps": MAX_STEPS,
    "eval_every": EVAL_EVERY,
    "poll_every": POLL_EVERY,
    "checkpoint_every": 1000,  # only the reports that acknowledge a command checkpoint
    "num_to_keep": 2,
    "max_failures": 1,
    "worker_start_timeout_s": WAIT_S,
    "controller_failure_limit": 0,
}
KICKS = [
    {"type": "kick", "kick": Kick("lr_multiply", {"factor": 0.5}, WINDOW).to_dict()},
    {"type": "kick", "kick": Kick("batch_size", {"factor": 2}).to_dict()},
    {"type": "rollback"},
]
KILL_ID = 2  # the rollback: taken, never applied or acknowledged before the kill
TAKE_AT = {0: 0, 5: 1, 10: KILL_ID}  # step -> the command rank 0 takes there (polls)
LR_KICK, BATCH_KICK, _ = TAKE_AT
CHECKPOINTED = 10  # the report acknowledging the batch kick: the last checkpoint before the kill
WAIT_AT = 15  # the poll after the report that followed the held command: rank 0 waits


class HoldAndWait(ChannelCommands):
    """Rank 0's channel commands, pinned to steps. Before the kill (no ``marker``) it asks the
    channel only at the steps of ``TAKE_AT`` and waits there until the command due arrives
    (the driver posts each once the one before is acknowledged); it holds back command
    ``KILL_ID`` and, at step ``WAIT_AT``, writes its pid to ``marker`` and waits to be killed.
    The worker that Train restarts (``marker`` there) polls as usual, but waits at its first
    poll for the command the dead worker held, which the channel must hand out again."""

    def __init__(self, trial_id: str, key: SweepKey, marker: Path) -> None:
        super().__init__(trial_id, key)
        self.marker = marker
        self.asks = 0  # the channel client paces by step: a growing count lets us ask again
        self.restarted: bool | None = None  # decided at the first call, in the worker

    def _wait_for(self, command_id: int, step: int) -> list[Command]:
        deadline, taken = time.monotonic() + WAIT_S, []
        while True:
            self.asks += 1
            taken += self.client.poll(self.asks)
            if any(c.id == command_id for c in taken):
                return taken
            if time.monotonic() > deadline:
                raise RuntimeError(f"command {command_id} not handed out by step {step}")
            time.sleep(0.1)

    def __call__(self, step: int) -> list[Any]:
        if self.restarted is None:
            self.restarted = self.marker.exists()
            if self.restarted:
                return list(self._wait_for(KILL_ID, step))
        if self.restarted:
            self.asks += 1
            return list(self.client.poll(self.asks))
        if step == WAIT_AT:
            self.marker.write_text(json.dumps({"pid": os.getpid(), "step": step}))
            time.sleep(WAIT_S)  # the driver kills this process meanwhile
            raise RuntimeError(f"rank 0 was not killed within {WAIT_S} s")
        if step not in TAKE_AT:
            return []
        return [c for c in self._wait_for(TAKE_AT[step], step) if c.id != KILL_ID]


class Driver(tune.Callback):
    """The scheduler's part on the driver: posts ``KICKS[0]`` when the trial starts and
    ``KICKS[i]`` once command ``i - 1`` is acknowledged; keeps every result as Tune passed it
    on; SIGKILLs rank 0 once it waits and Tune has passed on the last checkpoint (its directory
    present) and the report after it."""

    def __init__(self, marker: Path) -> None:
        self.channel = ControlChannel()
        self.marker = marker
        self.rows: list[dict[str, Any]] = []
        self.posted = -1
        self.killed_after: int | None = None  # how many results Tune had passed on

    def on_trial_start(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self.post(trial)

    def post(self, trial: Trial) -> None:
        self.posted += 1
        self.channel.post(trial.trial_id, {"id": self.posted, **KICKS[self.posted]})

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        self.rows.append(dict(result))
        if self.posted < len(KICKS) - 1 and result["control/acked_id"] == self.posted:
            self.post(trial)

    def on_step_begin(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        if self.killed_after is not None or not self.marker.exists():
            return
        by_step = {row["step"]: row for row in self.rows}
        checkpoint = by_step.get(CHECKPOINTED, {}).get("checkpoint_path")
        if checkpoint and Path(checkpoint).is_dir() and CHECKPOINTED + EVAL_EVERY in by_step:
            os.kill(json.loads(self.marker.read_text())["pid"], signal.SIGKILL)
            self.killed_after = len(self.rows)


@pytest.fixture(scope="module")
def killed_run(local_ray, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("rank_kill")
    marker = root / "waiting.json"
    driver = Driver(marker)
    key = driver.channel.key
    scheduler = GrokScheduler(
        metric="val_acc",
        mode="max",
        max_t=MAX_STEPS,
        max_extension=0,
        min_patience=10_000,
        stop_on_grok=False,
        predictor=False,
    )
    trainable = make_trainable(commands=lambda trial_id: HoldAndWait(trial_id, key, marker))
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 0.01}),
        param_space=SPACE,
        tune_config=tune.TuneConfig(scheduler=scheduler),
        run_config=tune.RunConfig(storage_path=str(root), verbose=0, callbacks=[driver]),
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
    return {
        "result": result,
        "rows": driver.rows,
        "killed_after": driver.killed_after,
        "killed": json.loads(marker.read_text()) if marker.exists() else None,
        "scheduler": scheduler,
        "logs": logs,
    }


def optimizer_steps(checkpoint: Path, rank: int) -> int:
    """How many optimizer steps rank ``rank``'s ZeRO-2 shard in ``checkpoint`` has taken."""
    shard = torch.load(
        checkpoint / TAG / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt",
        map_location="cpu",
        weights_only=False,
    )
    [state] = shard["optimizer_state_dict"]["base_optimizer_state"]["state"].values()
    return int(state["step"])


def test_a_killed_rank_resumes_from_the_last_checkpoint_with_its_control_state(
    killed_run: dict[str, Any],
) -> None:
    result, rows, killed = killed_run["result"], killed_run["rows"], killed_run["killed"]
    assert result.error is None and killed is not None and killed["step"] == WAIT_AT
    with pytest.raises(ProcessLookupError):
        os.kill(killed["pid"], 0)  # that worker is gone
    steps = [row["step"] for row in rows]
    (resume,) = [i for i in range(1, len(rows)) if steps[i] <= steps[i - 1]]  # one restart
    before, after = rows[:resume], rows[resume:]
    assert resume == killed_run["killed_after"]  # the restart is the kill's
    assert steps[:resume] == list(range(EVAL_EVERY, WAIT_AT + 1, EVAL_EVERY))
    # Resumed, on every rank, from the last checkpoint: the repeated steps come again.
    assert steps[resume:] == list(range(CHECKPOINTED + EVAL_EVERY, MAX_STEPS + 1, EVAL_EVERY))
    assert after[0]["training_iteration"] > before[-1]["training_iteration"]  # same Tune run
    checkpoints = [row for row in before if row.get("checkpoint_path")]
    assert [row["step"] for row in checkpoints] == [EVAL_EVERY, CHECKPOINTED]  # the two acks
    checkpoint = checkpoints[-1]

    # The control state at that checkpoint: both kicks in force, the batch kick acknowledged
    # (and the rollback point taken before it, which the rollback below needs); the rollback
    # itself never acknowledged before the kill.
    assert [row["control/acked_id"] for row in before] == [0, 1, 1]
    assert [row["control/applied_step"] for row in before] == [LR_KICK, BATCH_KICK, BATCH_KICK]
    assert checkpoint["control/kicks_active"] == 2 and checkpoint["batch_size"] == 64
    assert checkpoint["lr"] == pytest.approx(LR / 2)
    assert all(row["control/rollbacks"] == 0 and row["control/refused"] == 0 for row in before)

    # After the restart the rollback arrives once more and is applied once, at the resumed
    # step: back to the point before the batch kick, the lr kick still in force with its window
    # moved by the steps rolled back. Nothing refused, nothing applied twice.
    window_end = LR_KICK + WINDOW + (CHECKPOINTED - BATCH_KICK)
    assert CHECKPOINTED + EVAL_EVERY < window_end < MAX_STEPS  # the window ends in view
    for row in after:
        assert row["control/acked_id"] == KILL_ID and row["control/rollbacks"] == 1, row
        assert row["control/applied_step"] == CHECKPOINTED and row["control/refused"] == 0
        assert row["batch_size"] == 32
        in_window = row["step"] < window_end
        assert row["control/kicks_active"] == int(in_window), (row["step"], window_end)
        assert row["lr"] == pytest.approx(LR / 2 if in_window else LR), (row["step"], window_end)

    # Every rank's optimizer shard went on from the same state: the rollback point of the
    # checkpoint (BATCH_KICK steps), then the steps from the checkpoint to the end.
    final = Path(rows[-1]["checkpoint_path"])  # the run's last report checkpoints
    expected = BATCH_KICK + MAX_STEPS - CHECKPOINTED
    assert [optimizer_steps(final, rank) for rank in (0, 1)] == [expected, expected]


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
    (note,) = [m for m in killed_run["logs"] if "resumed at step" in m]  # once, not per result
    last = CHECKPOINTED + EVAL_EVERY
    assert note.startswith(
        f"GrokScheduler: trial {trial_id} resumed at step {last}, before its last result at "
        f"step {last}; its results up to step {last} are ignored"
    )
