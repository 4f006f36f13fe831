"""Driver process for tests/test_restore_pending.py: a sweep the test SIGKILLs on an event.

``restore_pending_driver.py STORAGE CURVES`` starts the sweep; ``GROK_KILL_MARKER`` names the
file the driver writes, and then stops, once an experiment checkpoint on disk holds the event:
the trial past ``max_t`` inside its extension while a kick by restart still waits.

The sweep: the grokker (its transition from step ~900) under ``max_t`` 1000 + ``max_extension``
400, kicked by ``lr_multiply`` ×3 at step 600. ``lr`` is not read by the replay: it is there for
the kick by restart to change (the replay does not poll the control channel), and the change
waits for the next result that carries a checkpoint, the first of the run, at step 1250
(``checkpoint_every`` 25): the extension from 1000 starts while it waits.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.experiment import Trial

from grokschedule.bench.replay_trainable import replay_trainable
from grokschedule.core.decision import DecisionKind
from tune_plugins import GrokCallback, GrokScheduler

MAX_T, MAX_EXTENSION, LR = 1000, 400, 1e-3


class KillSwitch(tune.Callback):
    """Stops the driver, for the test to SIGKILL, right after an experiment checkpoint that
    holds the event (module docstring) has reached the storage path.

    Tune asks every callback for its state while it writes an experiment checkpoint, GrokCallback
    (listed first) before this one, so ``get_state`` sees the scheduler exactly as that
    checkpoint holds it. At the start of the next loop iteration, before any further result is
    processed, it waits for the background upload to have copied that checkpoint to the storage
    path, writes ``GROK_KILL_MARKER`` and blocks: the state the test kills is the state on disk.
    ``Tuner.restore`` unpickles this callback with the sweep, so whether to stop is read from
    the environment, not kept in the object: without ``GROK_KILL_MARKER`` it does nothing."""

    def __init__(self, scheduler: GrokScheduler) -> None:
        self.scheduler = scheduler
        self.armed = False

    def get_state(self) -> dict[str, Any] | None:
        self.armed = "GROK_KILL_MARKER" in os.environ and self._event()
        return None

    def on_step_begin(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        if not self.armed or not trials:
            return
        self.armed = False  # an upload that does not complete here: the next checkpoint re-arms
        storage = trials[0].storage
        staged = Path(storage.experiment_driver_staging_path)
        stored = Path(storage.experiment_fs_path)
        for _ in range(100):  # the upload of a few small files: well under a second
            if all(
                (stored / f.name).is_file() and (stored / f.name).read_bytes() == f.read_bytes()
                for f in staged.iterdir()
                if f.is_file()
            ):
                break
            time.sleep(0.05)
        else:
            return
        Path(os.environ["GROK_KILL_MARKER"]).write_text(str(iteration))
        threading.Event().wait()  # until SIGKILL

    def _event(self) -> bool:
        """The one trial inside its extension past max_t with a kick by restart waiting."""
        policy = self.scheduler.policy
        trial_ids = [] if policy is None else policy.trial_ids()
        if policy is None or len(trial_ids) != 1:
            return False
        decision = policy.last_decision(trial_ids[0])
        restarts = self.scheduler.get_state()["restarts"]["trials"].get(trial_ids[0])
        return (
            decision is not None
            and decision.kind is DecisionKind.EXTEND
            and decision.step > MAX_T
            and restarts is not None
            and restarts.pending is not None
            and restarts.pending.command_id is not None  # a kick, not a window's end
        )


def build_tuner(storage: str, curve_file: str) -> tune.Tuner:
    scheduler = GrokScheduler(
        metric="val_acc",
        mode="max",
        max_t=MAX_T,
        max_extension=MAX_EXTENSION,
        patience_factor=4.0,
        min_patience=200,
        interventions=["lr_multiply"],
    )
    return tune.Tuner(
        replay_trainable,
        param_space={
            "curve_file": curve_file,
            "curve": "grokker_p47_wd1",
            "delay_s": 0.25,
            "checkpoint_every": 25,
            "lr": LR,
        },
        tune_config=tune.TuneConfig(scheduler=scheduler),
        run_config=tune.RunConfig(
            name="restore",
            storage_path=storage,
            callbacks=[GrokCallback(scheduler), KillSwitch(scheduler)],
            verbose=0,
        ),
    )


if __name__ == "__main__":
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    build_tuner(sys.argv[1], sys.argv[2]).fit()
