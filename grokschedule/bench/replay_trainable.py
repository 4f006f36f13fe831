"""A Tune function trainable that replays a recorded curve, so schedulers can be compared (and
faults injected) on identical real runs through real Ray Tune, without re-training.

With ``control`` in its config it also takes kicks live, as a trainer that polls the control
channel does: before each report it polls the channel and acknowledges every command admitted
(``control/acked_id``, ``control/applied_step``, ...), though a recorded curve cannot respond to
one, so what it reports next is the curve as recorded. The scheduler then reads the same
acknowledgements it would get from a real trainer, and the soak (``grokschedule bench soak``)
can check every KICK/ROLLBACK decision against an offline replay.
"""

from __future__ import annotations

import json
import tempfile
import time
from functools import cache
from pathlib import Path
from typing import Any

from ray import tune

from grokschedule.adapters.control_channel import ControlClient, key_from_config
from grokschedule.bench.bank import CurveBank
from grokschedule.core.commands import ROLLBACK, Command, ControlState

POSITION_FILE = "position.json"


@cache
def load_curves(path: str) -> dict[str, dict[str, list[float]]]:
    """``{name: {"curve": {metric: [values...]}}}`` as written in tests/data."""
    raw = json.loads(Path(path).read_text())
    return {name: entry["curve"] for name, entry in raw.items()}


@cache
def load_bank(path: str) -> CurveBank:
    """One load per worker process: a reused actor replays many rows of the same bank."""
    return CurveBank.load(path)


def bank_curve(path: str, index: int) -> dict[str, list[float]]:
    """Row ``index`` of a bank as plain Python lists (int steps, floats equal to the stored
    float32 values), keyed as a live trial reports it."""
    return {name: values.tolist() for name, values in load_bank(path).curve(index).items()}


def replay_trainable(config: dict[str, Any]) -> None:
    """Report one recorded curve one point at a time: row ``config["index"]`` of the bank file
    ``config["bank"]``, or curve ``config["curve"]`` of the JSON file ``config["curve_file"]``.

    ``every`` > 1 reports only every k-th recorded point (the first one after k records, as a
    trainable that reports every k evaluations would). ``delay_s`` sleeps between reports (to
    give a test time to act), and a checkpoint holding the position is reported every
    ``checkpoint_every`` points (0: never) so a restored or paused trial resumes there.
    ``control`` (default False) polls the control channel before every report and acknowledges
    the commands it admits (module docstring); such a trial keeps no checkpoint, so give it
    ``checkpoint_every`` 0.
    """
    if "bank" in config:
        curve = bank_curve(str(config["bank"]), int(config["index"]))
    else:
        curve = load_curves(str(config["curve_file"]))[config["curve"]]
    every = int(config.get("every", 1))
    if every > 1:  # sparse reporting: every k-th recorded point, the first one k records in
        curve = {name: values[every - 1 :: every] for name, values in curve.items()}
    delay_s = float(config.get("delay_s", 0.0))
    checkpoint_every = int(config.get("checkpoint_every", 5))
    acks = _Polled(tune.get_context().get_trial_id(), config) if config.get("control") else None
    if acks is not None and checkpoint_every:
        raise ValueError(
            f"a replay that polls the control channel keeps no checkpoint (its acknowledgements "
            f"would be lost on a restore): checkpoint_every must be 0, got {checkpoint_every}"
        )
    position = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            position = json.loads((Path(directory) / POSITION_FILE).read_text())["position"]
    for index in range(position, len(curve["step"])):
        metrics = {name: values[index] for name, values in curve.items()}
        time.sleep(delay_s)
        if acks is not None:
            reached = curve["step"][index - 1] if index else -1
            metrics.update(acks.poll(int(curve["step"][index]), int(reached)))
        if not checkpoint_every or (index + 1) % checkpoint_every:
            tune.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as directory:
            (Path(directory) / POSITION_FILE).write_text(json.dumps({"position": index + 1}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


class ReplayAcks:
    """How a replay acknowledges commands, as a trainer does (``ControlState``): the last
    command's id and the step reached when it was applied, rollbacks, and the kicks whose
    window is still open. The soak's offline replay acknowledges through this class too, so
    both sides acknowledge alike."""

    def __init__(self) -> None:
        self.state = ControlState()
        self.kicks: list[tuple[int, int | None]] = []  # (applied step, duration) in force

    def apply(self, command: Command, reached: int) -> None:
        """Carry out ``command`` (nothing changes in a recorded curve) at step ``reached``."""
        rollbacks = self.state.rollbacks
        if command.type == ROLLBACK:
            rollbacks += 1
            if self.kicks:
                self.kicks.pop()  # the policy rolls back the last kick applied
        else:
            assert command.kick is not None  # a kick command carries its Kick
            self.kicks.append((reached, command.kick.duration_steps))
        self.state = ControlState(command.id, reached, rollbacks)

    def metrics(self, step: int) -> dict[str, int]:
        """The acknowledgement keys of the report at ``step``."""
        active = sum(duration is None or step <= at + duration for at, duration in self.kicks)
        return self.state.metrics(active)


class _Polled:
    """The live side: poll the channel before each report (at most 5 s, then the commands come
    with a later poll) and acknowledge what it admits."""

    def __init__(self, trial_id: str, config: dict[str, Any]) -> None:
        self.client = ControlClient(trial_id, 1, key_from_config(config))
        self.acks = ReplayAcks()

    def poll(self, step: int, reached: int) -> dict[str, int]:
        """The acknowledgement keys for the report at ``step``; commands polled now took
        effect at ``reached``, the last step reported."""
        for command in self.client.poll(step):
            self.acks.apply(command, reached)
        return self.acks.metrics(step) | self.client.metrics()
