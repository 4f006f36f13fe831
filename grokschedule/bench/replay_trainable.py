"""A Tune function trainable that replays a recorded curve, so schedulers can be compared (and
faults injected) on identical real runs through real Ray Tune, without re-training."""

from __future__ import annotations

import json
import tempfile
import time
from functools import cache
from pathlib import Path
from typing import Any

from ray import tune

from grokschedule.bench.bank import CurveBank

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
    position = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            position = json.loads((Path(directory) / POSITION_FILE).read_text())["position"]
    for index in range(position, len(curve["step"])):
        metrics = {name: values[index] for name, values in curve.items()}
        time.sleep(delay_s)
        if not checkpoint_every or (index + 1) % checkpoint_every:
            tune.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as directory:
            (Path(directory) / POSITION_FILE).write_text(json.dumps({"position": index + 1}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
