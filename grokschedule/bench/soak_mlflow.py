"""The MLflow side of ``grokschedule bench soak``: a real ``mlflow server`` on 127.0.0.1 that is
killed for a while mid-sweep and started again on the same port and store, and the check, after
the sweep, that every record of the sweep's journal reached that store exactly once.

The check reads the server's sqlite store and artifact directory directly (the server stopped),
not through the REST API, so what it counts is what MLflow kept, not what a query returns:

- one run per journal ``create_run`` (each trial's and the sweep's), found by its
  ``grok.run_key`` tag, and no other run in the experiment;
- every metric row of the journal once: for each run, (metric, step) the number of times the
  journal logged it — once for a trial's metric, for the sweep's totals once per logging — with
  the journal's value; no other row;
- each run's params and the last value of each tag the journal set (phase, last decision,
  verdict, ...), and the status its ``end_run`` gave it;
- every artifact (the decision timeline ``grok/decisions.json``, timelines, plots, the sweep
  report) with the bytes the journal kept, and nothing refused (``rejected.jsonl``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grokschedule.tracking import names
from grokschedule.tracking.spool import CURSOR, RECORDS, REJECTED

START_TIMEOUT_S = 180.0  # a cold start of the server on a loaded two-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalMlflowServer:
    """``mlflow server`` on sqlite with proxied artifacts under ``root``, on a fixed free local
    port, so a restart comes back at the same URI with the same store."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        command = [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.db}",
            "--artifacts-destination",
            str(self.artifacts),
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
                self.kill()
                raise RuntimeError(f"mlflow server did not start; see {log.name}")
            time.sleep(0.3)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the server and its workers (its own process group): a crash, not a shutdown,
        so replies to requests in flight are lost."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = None


class Outage(threading.Thread):
    """Kill ``server`` once ``finished()`` reaches ``at_trials``, keep it down ``down_s``, start
    it again, then time how long the sender takes to deliver what the journal held by then."""

    def __init__(
        self,
        server: LocalMlflowServer,
        down_s: float,
        at_trials: int,
        finished: Callable[[], int],
        spool: Path,
    ) -> None:
        super().__init__(name="soak-mlflow-outage", daemon=True)
        self.server, self.down_s, self.at_trials = server, down_s, at_trials
        self.finished, self.spool = finished, spool
        self.cancelled = threading.Event()
        self.figures: dict[str, Any] = {}
        self.error: BaseException | None = None
        self.window: tuple[float, float] | None = None  # monotonic (killed, healthy again)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as error:  # reported by the soak, never swallowed
            self.error = error

    def _run(self) -> None:
        while self.finished() < self.at_trials:
            if self.cancelled.wait(0.2):
                return
        killed = time.monotonic()
        trials_at_kill = self.finished()
        self.server.kill()
        time.sleep(max(0.0, self.down_s - (time.monotonic() - killed)))
        restart = time.monotonic()
        self.server.start()
        healthy = time.monotonic()
        self.window = (killed, healthy)
        target = journal_size(self.spool)
        self.figures = {
            "trials_finished_at_kill": trials_at_kill,
            "down_s": round(healthy - killed, 1),
            "restart_s": round(healthy - restart, 1),
            "backlog_kib_at_restart": round((target - sent_offset(self.spool)) / 1024, 1),
            "caught_up_after_s": None,  # not within the sweep when it stays None
        }
        while sent_offset(self.spool) < target:
            if self.cancelled.wait(0.2):
                return
        self.figures["caught_up_after_s"] = round(time.monotonic() - healthy, 1)


def journal_size(spool: Path) -> int:
    path = spool / RECORDS
    return path.stat().st_size if path.exists() else 0


def sent_offset(spool: Path) -> int:
    path = spool / CURSOR
    if not path.exists():
        return 0
    try:
        return int(json.loads(path.read_text())["offset"])
    except (json.JSONDecodeError, KeyError):  # replaced atomically, but be safe
        return 0


def verify_delivery(
    server: LocalMlflowServer, spool: Path, experiment: str, decisions: dict[str, list[Any]]
) -> dict[str, Any]:
    """Compare the journal in ``spool`` with what the (stopped) server stored; ``decisions``:
    each trial's decision log as ``Decision.to_dict()`` dicts, which its ``grok/decisions.json``
    must hold. Returns counts and a list of ``problems`` (empty when every record arrived
    exactly once)."""
    records, sent_metrics = _records(spool)
    created = [r for r in records if r["op"] == "create_run"]
    expected_metrics: dict[str, Counter[tuple[str, int, float]]] = {}
    expected_tags: dict[str, dict[str, str]] = {}
    expected_params: dict[str, dict[str, str]] = {}
    expected_status: dict[str, str] = {}
    artifacts: list[dict[str, Any]] = []
    for record in records:
        op, key = record["op"], record.get("key", "")
        if op == "create_run":
            expected_tags.setdefault(key, {}).update(record["tags"])
        elif op == "params":
            expected_params[key] = record["params"]
        elif op == "metrics":
            rows = expected_metrics.setdefault(key, Counter())
            rows.update((name, record["step"], value) for name, value in record["values"].items())
        elif op == "tags":
            expected_tags.setdefault(key, {}).update(record["tags"])
        elif op == "end_run":
            expected_status[key] = record["status"]
        elif op == "artifact":
            artifacts.append(record)
    problems: list[str] = []
    rejected = spool / REJECTED
    if rejected.exists() and rejected.read_text().strip():
        problems.append(f"MLflow refused records: {rejected}")
    if sent_offset(spool) != journal_size(spool):
        problems.append("the journal was not sent to the end")

    with sqlite3.connect(f"file:{server.db}?mode=ro", uri=True) as db:
        (experiment_id,) = db.execute(
            "SELECT experiment_id FROM experiments WHERE name = ?", (experiment,)
        ).fetchone()
        runs = db.execute(
            "SELECT run_uuid, status FROM runs WHERE experiment_id = ?", (experiment_id,)
        ).fetchall()
        status = dict(runs)
        keyed: dict[str, list[str]] = {}
        for run_id, value in db.execute(
            "SELECT run_uuid, value FROM tags WHERE key = ?", (names.RUN_KEY,)
        ):
            if run_id in status:
                keyed.setdefault(value, []).append(run_id)
        sweep_id = created[0]["tags"][names.SWEEP_ID]
        run_of: dict[str, str] = {}
        for record in created:
            found = keyed.get(f"{sweep_id}/{record['key']}", [])
            if len(found) != 1:
                problems.append(f"run {record['key']}: {len(found)} MLflow runs, expected 1")
            if found:
                run_of[record["key"]] = found[0]
        if len(runs) != len(created):
            problems.append(f"{len(runs)} runs in the experiment, the journal made {len(created)}")
        # One pass over each table (their keys do not start with the run id: a query per run
        # would scan the whole table a thousand times).
        stored_metrics: dict[str, Counter[tuple[str, int, float]]] = {}
        for run_id, name, step, value in db.execute(
            "SELECT run_uuid, key, step, value FROM metrics"
        ):
            stored_metrics.setdefault(run_id, Counter())[name, int(step), float(value)] += 1
        stored_tags: dict[str, dict[str, str]] = {}
        for run_id, name, value in db.execute("SELECT run_uuid, key, value FROM tags"):
            stored_tags.setdefault(run_id, {})[name] = value
        stored_params: dict[str, dict[str, str]] = {}
        for run_id, name, value in db.execute("SELECT run_uuid, key, value FROM params"):
            stored_params.setdefault(run_id, {})[name] = value
        metric_rows = extra_rows = missing_sent_rows = 0
        for key, run_id in run_of.items():
            stored = stored_metrics.get(run_id, Counter())
            metric_rows += sum(stored.values())
            wanted = Counter(
                {
                    (name, step, float(value)): n
                    for (name, step, value), n in expected_metrics.get(key, Counter()).items()
                }
            )
            # Whether delivery finished or not: nothing twice, nothing the sender counted as
            # sent missing.
            extra_rows += sum((stored - wanted).values())
            missing_sent_rows += sum((sent_metrics.get(key, Counter()) - stored).values())
            if stored != wanted:
                extra, missing = stored - wanted, wanted - stored
                problems.append(
                    f"run {key}: metric rows differ: {sum(extra.values())} extra "
                    f"(e.g. {list(extra)[:2]}), {sum(missing.values())} missing "
                    f"(e.g. {list(missing)[:2]})"
                )
            tags = stored_tags.get(run_id, {})
            wrong = {k for k, v in expected_tags.get(key, {}).items() if tags.get(k) != v}
            parent = run_of.get(names.PARENT_KEY)
            if key != names.PARENT_KEY and tags.get(names.PARENT_RUN_ID) != parent:
                wrong.add(names.PARENT_RUN_ID)  # nested under the sweep's own run
            if wrong:
                problems.append(f"run {key}: tags {sorted(wrong)[:5]} missing or different")
            params = stored_params.get(run_id, {})
            if params != expected_params.get(key, {}):
                problems.append(f"run {key}: params differ from the journal's")
            if status.get(run_id) != expected_status.get(key):
                problems.append(
                    f"run {key}: status {status.get(run_id)}, journal {expected_status.get(key)}"
                )
        artifact_root = db.execute(
            "SELECT artifact_location FROM experiments WHERE experiment_id = ?", (experiment_id,)
        ).fetchone()[0]
    # mlflow-artifacts:/<experiment id> is served from the artifacts destination.
    experiment_dir = server.artifacts / artifact_root.rpartition(":/")[2].lstrip("/")
    for record in artifacts:
        local = spool / record["file"]
        name = (Path(record["artifact_path"] or "") / local.name).as_posix()
        run_id = run_of.get(record["key"])
        stored_file = experiment_dir / str(run_id) / "artifacts" / name
        if run_id is None or not stored_file.exists():
            problems.append(f"run {record['key']}: artifact {name} missing")
        elif stored_file.read_bytes() != local.read_bytes():
            problems.append(f"run {record['key']}: artifact {name} differs from the journal's")
    decision_files = 0
    for trial_id, wanted_log in decisions.items():
        run_id = run_of.get(trial_id)
        path = experiment_dir / str(run_id) / "artifacts" / names.DECISIONS_JSON
        if run_id is None or not path.exists():
            continue  # counted above as a missing run or artifact
        decision_files += 1
        if _canonical(json.loads(path.read_text())) != _canonical(wanted_log):
            problems.append(f"trial {trial_id}: {names.DECISIONS_JSON} is not its decision log")
    return {
        "records": len(records),
        "runs_duplicated": sum(len(found) > 1 for found in keyed.values()),
        "runs_missing": len(created) - len(run_of),
        "metric_rows_extra": extra_rows,
        "metric_rows_missing_of_sent": missing_sent_rows,
        "metric_rows_expected": sum(sum(c.values()) for c in expected_metrics.values()),
        "runs": len(runs),
        "trial_runs": len(created) - 1,
        "metric_rows": metric_rows,
        "artifacts": len(artifacts),
        "decision_files": decision_files,
        "decisions_logged": sum(len(log) for log in decisions.values()),
        "problems": problems,
    }


def _canonical(data: Any) -> str:
    """JSON text to compare by (NaN signals compare equal as text, not as floats)."""
    return json.dumps(data, sort_keys=True)


def _records(spool: Path) -> tuple[list[dict[str, Any]], dict[str, Counter[tuple[str, int, Any]]]]:
    """The journal's records, and per run the metric rows of those before the send cursor."""
    cursor, offset = sent_offset(spool), 0
    records: list[dict[str, Any]] = []
    sent: dict[str, Counter[tuple[str, int, Any]]] = {}
    path = spool / RECORDS
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            offset += len(line)
            record = json.loads(line)
            records.append(record)
            if record["op"] == "metrics" and offset <= cursor:
                rows = sent.setdefault(record["key"], Counter())
                rows.update((k, record["step"], float(v)) for k, v in record["values"].items())
    return records, sent
