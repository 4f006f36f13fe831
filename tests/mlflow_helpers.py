"""Test helpers for the MLflow tracking tests: a real ``mlflow server`` (the soak bench's) that a
test can stop and restart, and a sweep of recorded curves replayed through the real policy and
``SweepLogger``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from grokschedule.bench.soak_mlflow import LocalMlflowServer
from grokschedule.core.contract import Observation
from grokschedule.core.decision import DecisionKind
from grokschedule.core.kick_policy import KickConfig
from grokschedule.core.kicks import GROKFAST, LR_MULTIPLY, ORTHO_GRAD, WEIGHT_DECAY, Kick
from grokschedule.core.policy import GrokPolicy, PolicyConfig
from grokschedule.tracking.logger import SweepLogger

DATA = Path(__file__).parent / "data"
CURVES = DATA / "recorded_curves.json"


class MlflowServer(LocalMlflowServer):
    """The soak's ``mlflow server`` (sqlite, proxied artifacts, a free local port), which a test
    may also stop as an operator would: SIGTERM, so requests in flight are answered."""

    def stop(self) -> None:
        """Stop the server and its workers (its own process group, started by ``start``)."""
        if self.process is None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None


def load_curves() -> dict[str, dict[str, list[float]]]:
    return {name: entry["curve"] for name, entry in json.loads(CURVES.read_text()).items()}


# The kicks and kick rules the tracking assertions were written for (the defaults before the kick
# table, issue 16): these tests are about what MLflow records, not about which kick is chosen.
RECORDED_KICKS = KickConfig(
    kicks=(
        Kick(GROKFAST, {"alpha": 0.98, "lamb": 2.0}),
        Kick(LR_MULTIPLY, {"factor": 3.0}, duration_steps=300),
        Kick(WEIGHT_DECAY, {"factor": 3.0}, duration_steps=600),
        Kick(ORTHO_GRAD),
    ),
    max_weight_decay=None,
    first=(),
    probe_trials=0,
    verdict_after=None,
)


def log_recorded_sweep(
    logger: SweepLogger, curves: Sequence[str], kicks: bool = False
) -> dict[str, int]:
    """Replay recorded curves through GrokPolicy into ``logger``, as the Tune callback would;
    returns the number of results logged per trial. ``kicks`` lets the policy kick plateaus (the
    curves do not react, so the kicks show up as kicks that did nothing)."""
    config = PolicyConfig(
        metric="val_acc",
        mode="max",
        max_t=logger.max_t,
        max_extension=logger.max_extension,
        interventions=RECORDED_KICKS if kicks else None,
        patience_factor=10.0,  # the rule timings the assertions were written for
        judge_after=2.0,
    )
    policy = GrokPolicy(config)
    recorded = load_curves()
    logger.start_sweep(
        "recorded sweep",
        {"mode": "max", "time_attr": "step", "interventions": str(kicks)},
        {"curve": f"grid_search({list(curves)})"},
    )
    counts = {}
    for name in curves:
        curve = recorded[name]
        logger.start_trial(name, name, {"curve": name})
        for i, step in enumerate(curve["step"]):
            values = {k: v[i] for k, v in curve.items()}
            observation = Observation(
                step=step,
                target=values["val_acc"],
                train_loss=values["train_loss"],
                train_acc=values["train_acc"],
                val_loss=values["val_loss"],
                weight_norm=values["weight_norm"],
                extras={k: v for k, v in values.items() if k.startswith("grok/")},
            )
            decision = policy.observe(name, observation)
            values["scheduler/score"] = decision.score
            logger.log_result(name, step, values, decision)
            counts[name] = i + 1
            if decision.kind is DecisionKind.STOP:
                break
        logger.end_trial(name, name, policy.decision_log(name))
    return counts
