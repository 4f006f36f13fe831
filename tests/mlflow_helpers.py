"""Test helpers for the MLflow tracking tests: a real ``mlflow server`` that a test can stop and
restart, and a sweep of recorded curves replayed through the real policy and ``SweepLogger``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from grokschedule.core.contract import Observation
from grokschedule.core.decision import DecisionKind
from grokschedule.core.kick_policy import KickConfig
from grokschedule.core.kicks import GROKFAST, LR_MULTIPLY, ORTHO_GRAD, WEIGHT_DECAY, Kick
from grokschedule.core.policy import GrokPolicy, PolicyConfig
from grokschedule.tracking.logger import SweepLogger

DATA = Path(__file__).parent / "data"
CURVES = DATA / "recorded_curves.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlflowServer:
    """``mlflow server`` on sqlite with proxied artifacts, on a free local port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120) -> None:
        mlflow = Path(sys.executable).parent / "mlflow"
        command = [
            str(mlflow),
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        # The job runner (huey consumers) doubles the start time and is not needed here.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.starts += 1
        log = (self.root / f"server-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while not self.healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start; see {log.name}")
            time.sleep(0.3)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server and its workers (its own process group, started above)."""
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
