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

POSITION_FILE = "position.json"


@cache
def load_curves(path: str) -> dict[str, dict[str, list[float]]]:
    """``{name: {"curve": {metric: [values...]}}}`` as written in tests/data."""
    raw = json.loads(Path(path).read_text())
    return {name: entry["curve"] for name, entry in raw.items()}


def replay_trainable(config: dict[str, Any]) -> None:
    """Report curve ``config["curve"]`` of ``config["curve_file"]`` one point at a time.

    ``delay_s`` sleeps between reports (to give a test time to act), and a checkpoint holding the
    position is reported every ``checkpoint_every`` points so a restored trial resumes there.
    """
    curve = load_curves(str(config["curve_file"]))[config["curve"]]
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
        if (index + 1) % checkpoint_every:
            tune.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as directory:
            (Path(directory) / POSITION_FILE).write_text(json.dumps({"position": index + 1}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
