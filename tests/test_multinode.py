"""A real multi-node sweep on one machine, submitted the way cluster_configs/README.md says.

Two Ray nodes on loopback, both with token auth on as in every cluster config: a head with one
CPU and a worker with two CPUs and the custom resource ``gpu_node``, standing in for a GPU node.
``ray job submit --working-dir <repo> -- grokschedule sweep sweeps/multinode-test.yaml``
runs a sweep whose trials each need ``gpu_node``; Ray's own records then show where they ran.

``ray stop`` cannot be aimed at one cluster and other clusters may run on this machine, so the
nodes run under ``ray start --block`` (which takes its node's processes down on SIGTERM) and
cleanup ends only processes of these nodes: their sessions, or a cwd / command line inside this
test's Ray temp dir (the job's driver runs in a session of its own, in the uploaded working dir).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import psutil
import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SPEC = "sweeps/multinode-test.yaml"
BIN = Path(sys.executable).parent


@dataclass
class Cluster:
    gcs: str  # host:port, for drivers (RAY_ADDRESS)
    dashboard: str  # http://host:port, for the job and state APIs
    env: dict[str, str]  # RAY_AUTH_MODE=token and this cluster's token file
    token: str
    worker_session: int  # the worker node's session id: its raylet and workers carry it
    runs: Path  # GROKSCHEDULE_STORAGE_PATH on the nodes, so the job's driver writes there
    start: Callable[[list[str], str], subprocess.Popen[bytes]]  # another node: (args, name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _node_ports() -> list[str]:
    """Every port a node opens, picked free, so nothing collides with other clusters here."""
    names = (
        "node-manager-port",
        "object-manager-port",
        "metrics-export-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
    )
    return [f"--{name}={_free_port()}" for name in names]


_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy


def _get(url: str, token: str | None) -> Any:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    with _http.open(urllib.request.Request(url, headers=headers), timeout=30) as reply:
        return json.load(reply)


def _state(dashboard: str, token: str, resource: str, **equal: str) -> list[dict[str, Any]]:
    """Ray's state API (what `ray list` calls), straight over HTTP: no CLI start-up per call."""
    query = urllib.parse.urlencode(
        {
            "detail": "true",
            "limit": 1000,
            "filter_keys": list(equal),
            "filter_predicates": ["="] * len(equal),
            "filter_values": list(equal.values()),
        },
        doseq=True,
    )
    return list(_get(f"{dashboard}/api/v0/{resource}?{query}", token)["data"]["result"]["result"])


def _alive_nodes(dashboard: str, token: str) -> list[dict[str, Any]]:
    try:
        return _state(dashboard, token, "nodes", state="ALIVE")
    except (OSError, KeyError, ValueError):  # dashboard still starting
        return []


def _wait_for_nodes(dashboard: str, token: str, count: int, node: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 90
    while len(_alive_nodes(dashboard, token)) < count:
        assert node.poll() is None, f"ray start exited with {node.returncode}"
        assert time.monotonic() < deadline, f"{dashboard} never showed {count} nodes"
        time.sleep(0.5)


def _ours(process: psutil.Process, sessions: set[int], temp_dir: str) -> bool:
    try:
        if os.getsid(process.pid) in sessions:
            return True
        return process.cwd().startswith(temp_dir) or any(
            temp_dir in part for part in process.cmdline()
        )
    except (psutil.Error, OSError):
        return False


def _stop(nodes: list[subprocess.Popen[bytes]], temp_dir: Path) -> None:
    for node in reversed(nodes):  # worker first, then head
        node.send_signal(signal.SIGTERM)
    for node in nodes:
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.kill()
    sessions = {node.pid for node in nodes}  # start_new_session: each is its session's leader
    left = [p for p in psutil.process_iter() if _ours(p, sessions, str(temp_dir))]
    for process in left:
        process.kill()
    psutil.wait_procs(left, timeout=10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("multinode")
    token = secrets.token_hex(32)
    token_file = root / "auth_token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "GROKSCHEDULE_"))}
    env |= {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_file),
        "GROKSCHEDULE_STORAGE_PATH": str(root / "runs"),
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        # A lost node is declared dead after ~5 s instead of 15-30 s (test_a_lost_node_...).
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_timeout_ms": "2000",
        "RAY_health_check_failure_threshold": "5",
    }
    # Not under root: Ray's socket paths inside it would pass the 107-byte AF_UNIX limit. One
    # temp dir per node, as on separate machines: nodes sharing one also share the session's
    # runtime_resources, and the worker's runtime-env agent then deletes the job's working dir.
    temp_dir = Path(tempfile.mkdtemp(prefix="gs-ray-"))
    gcs_port, dashboard_port = _free_port(), _free_port()
    gcs, dashboard = f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dashboard_port}"
    common = ["--block", "--node-ip-address=127.0.0.1"]
    nodes: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], name: str) -> subprocess.Popen[bytes]:
        node_dir = f"--temp-dir={temp_dir / name}"
        with open(root / f"{name}.log", "wb") as out:
            node = subprocess.Popen(
                [str(BIN / "ray"), "start", *common, node_dir, *args, *_node_ports()],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        nodes.append(node)
        return node

    try:
        head = start(
            [
                "--head",
                f"--port={gcs_port}",
                "--num-cpus=1",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard_port}",
                f"--ray-client-server-port={_free_port()}",
            ],
            "head",
        )
        _wait_for_nodes(dashboard, token, 1, head)
        worker = start(
            [f"--address={gcs}", "--num-cpus=2", '--resources={"gpu_node": 2}'], "worker"
        )
        _wait_for_nodes(dashboard, token, 2, worker)
        yield Cluster(gcs, dashboard, env, token, worker.pid, root / "runs", start)
    finally:
        _stop(nodes, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_token_auth_is_on(cluster: Cluster) -> None:
    jobs = f"{cluster.dashboard}/api/jobs/"
    for token, status in ((None, 401), (secrets.token_hex(32), 403)):
        with pytest.raises(urllib.error.HTTPError) as refused:
            _get(jobs, token)
        assert refused.value.code == status
    assert _get(jobs, cluster.token) == []


def test_resources_no_node_has_fail_before_tune(cluster: Cluster, tmp_path: Path) -> None:
    spec = yaml.safe_load((REPO / SPEC).read_text())
    spec["resources"] = {"CPU": 1, "gpu_node": 3}
    path = tmp_path / "too-big.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = cluster.env | {"RAY_ADDRESS": cluster.gcs, "GROKSCHEDULE_STORAGE_PATH": str(tmp_path)}
    run = subprocess.run(
        [sys.executable, "-m", "grokschedule.app.sweep", str(path), "--dry-run"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert "joined a cluster of 2 node(s)" in run.stdout
    assert "resources: no node can host {CPU: 1, gpu_node: 3}" in run.stderr
    assert "{CPU: 2, gpu_node: 2}" in run.stderr  # names what the nodes do have


def test_submitted_sweep_runs_its_trials_on_the_gpu_node(cluster: Cluster) -> None:
    runs = cluster.runs
    submit = [str(BIN / "ray"), "job", "submit", "--address", cluster.dashboard]
    entrypoint = ["python", "-m", "grokschedule.app.sweep", SPEC]
    experiment = runs / "ray_results" / "grokschedule-multinode-test"
    log = runs.parent / "job-submit.log"
    session_of: dict[int, int] = {}
    with log.open("wb") as out:
        job = subprocess.Popen(
            [*submit, "--working-dir", str(REPO), "--", *entrypoint],
            env=cluster.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:  # which node each trial process is on, while it runs
        _record_until_exit(job, session_of, 240)
    finally:
        if job.poll() is None:
            job.kill()
    logs = log.read_text()
    assert job.returncode == 0, logs[-6000:]
    assert "joined a cluster of 2 node(s)" in logs  # the driver joined the job's cluster
    assert "=== grokschedule sweep: summary ===" in logs

    # Each trial reported its process id, which ran in the worker node's process session.
    trials = {}
    for result_file in experiment.glob("*/result.json"):
        last = json.loads(result_file.read_text().splitlines()[-1])
        trials[last["trial_id"]] = last["pid"]
    assert len(trials) == 2
    assert {session_of.get(pid) for pid in trials.values()} == {cluster.worker_session}

    # MLflow (sqlite under the storage path) holds one run per trial.
    client = mlflow.MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    mlflow_experiment = client.get_experiment_by_name("grokschedule-multinode-test")
    assert mlflow_experiment is not None
    trial_runs = [
        run
        for run in client.search_runs([mlflow_experiment.experiment_id])
        if "trial_name" in run.data.tags
    ]
    assert len(trial_runs) == 2
    for trial_id in trials:
        run = next(r for r in trial_runs if trial_id in r.data.tags["trial_name"])
        assert "val_acc" in run.data.metrics
        assert run.data.params["weight_decay"] in ("0.0", "1.0")


# -- a worker node lost mid-sweep --------------------------------------------------------------
# Last in the module: it adds a node and kills it. Four trials fill the two worker nodes (two
# gpu_node slots each); the added node's two are retried on the other worker once it has room.
LOST_NODE_STEPS, LOST_NODE_EVAL, LOST_NODE_CHECKPOINT = 2000, 100, 200


def _rows(trial_dir: Path) -> list[dict[str, Any]]:
    try:
        text = (trial_dir / "result.json").read_text()
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the line Tune is writing now
            break
    return rows


def _in_session(pid: int, session: int) -> bool:
    try:
        return os.getsid(pid) == session
    except ProcessLookupError:
        return False


def _trials(root: Path, pattern: str) -> dict[str, list[dict[str, Any]]]:
    """Each trial directory under ``root`` matching ``pattern``: its results so far."""
    return {d.name: _rows(d) for d in root.glob(pattern) if d.is_dir()}


def _record_sessions(session_of: dict[int, int]) -> None:
    """The session of every process alive now, for the trial pids the results name later: each
    node here is a process session on this machine, so `getsid` says which node a process was
    on (Ray's state API may not list a finished actor yet, and a trial's process may be gone
    before the driver writes its results)."""
    for process in psutil.process_iter():
        with contextlib.suppress(ProcessLookupError):
            session_of.setdefault(process.pid, os.getsid(process.pid))


def _record_until_exit(
    process: subprocess.Popen[bytes], session_of: dict[int, int], timeout: float
) -> None:
    """``_record_sessions`` every 0.1 s until ``process`` exits."""
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        assert time.monotonic() < deadline, f"{process.args} ran past {timeout:.0f} s"
        _record_sessions(session_of)
        time.sleep(0.1)


def _checkpointed(rows: list[dict[str, Any]]) -> list[int]:
    """The steps of a trial's results that carried a checkpoint, as the driver recorded them."""
    return [row["step"] for row in rows if row.get("checkpoint_dir_name")]


def test_a_lost_node_s_trials_resume_elsewhere_counted_and_logged_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    before = len(_alive_nodes(cluster.dashboard, cluster.token))
    node = cluster.start(
        [f"--address={cluster.gcs}", "--num-cpus=2", '--resources={"gpu_node": 2}'], "lost"
    )
    _wait_for_nodes(cluster.dashboard, cluster.token, before + 1, node)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = {
        "trainable": "modular",
        "search_space": {
            "p": 23,
            "embed_dim": 32,
            "hidden_dim": 64,
            "weight_decay": 0.0,
            "lr": {"grid": [1e-3, 1.5e-3, 2e-3, 2.5e-3]},
            "max_steps": LOST_NODE_STEPS,
            "eval_every": LOST_NODE_EVAL,
            "checkpoint_every": LOST_NODE_CHECKPOINT,
        },
        "resources": {"CPU": 1, "gpu_node": 1},
        "scheduler": {
            "metric": "val_acc",
            "mode": "max",
            "max_t": LOST_NODE_STEPS,
            "max_extension": 0,
            "min_patience": 100_000,
            "predictor": False,
            "stop_on_grok": False,
        },
        "mlflow": {"tracking_uri": store, "experiment": "lost-node"},
        "failure": {"max_failures": 2},
    }
    (tmp_path / "lost-node.yaml").write_text(yaml.safe_dump(spec))
    runs = tmp_path / "runs"
    env = cluster.env | {"RAY_ADDRESS": cluster.gcs, "GROKSCHEDULE_STORAGE_PATH": str(runs)}
    log = tmp_path / "sweep.log"
    with log.open("wb") as out:
        driver = subprocess.Popen(
            [sys.executable, "-m", "grokschedule.app.sweep", str(tmp_path / "lost-node.yaml")],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    session_of: dict[int, int] = {}
    try:
        # Kill the added node once the driver has recorded, for each of its two trials, a
        # checkpoint and a result after it (a node dies between checkpoints), neither trial
        # finished. Once met, this holds until a trial's last result: no window to miss.
        deadline = time.monotonic() + 240
        while True:
            assert driver.poll() is None, (
                f"the sweep ended before the kill:\n{log.read_text()[-4000:]}"
            )
            assert time.monotonic() < deadline, "the lost node never checkpointed two trials"
            trials = _trials(runs, "ray_results/*/*")
            _record_sessions(session_of)
            doomed = {
                name: rows
                for name, rows in trials.items()
                if rows and _in_session(rows[-1]["pid"], node.pid)
            }
            ready = [
                bool(_checkpointed(rows[:-1])) and rows[-1]["step"] < LOST_NODE_STEPS
                for rows in doomed.values()
            ]
            if len(doomed) == 2 and all(ready):
                break
            time.sleep(0.1)
        lost = [p for p in psutil.process_iter() if _in_session(p.pid, node.pid)]
        for process in lost:  # raylet, its workers, the trials: the node is gone at once
            process.kill()
        psutil.wait_procs(lost, timeout=10)
        killed_pids = {p.pid for p in lost}
        # the retried trials' processes, while they run
        _record_until_exit(driver, session_of, 300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        output = log.read_text()
    assert driver.returncode == 0, output[-6000:]
    assert "joined a cluster of 3 node(s)" in output

    # Each of the lost node's trials was retried on the other worker, from its last checkpoint.
    trials = _trials(runs, "ray_results/*/*")
    assert len(trials) == 4
    pids = {name: list(dict.fromkeys(row["pid"] for row in rows)) for name, rows in trials.items()}
    for name, rows in trials.items():
        assert rows[-1]["step"] == LOST_NODE_STEPS, name
        if name not in doomed:
            assert len(pids[name]) == 1
            assert session_of.get(pids[name][0]) == cluster.worker_session, (name, session_of)
            continue
        first, retried = pids[name]
        assert first in killed_pids and session_of.get(first) == node.pid
        assert session_of.get(retried) == cluster.worker_session, (name, session_of)
        split = next(i for i, row in enumerate(rows) if row["pid"] == retried)
        checkpoint = _checkpointed(rows[:split])[-1]
        assert rows[split]["step"] == checkpoint + LOST_NODE_EVAL, (name, checkpoint)

    # The summary counts each trial once, to its last step.
    assert "Other (4):" in output or "Stopped (4):" in output, output[-3000:]
    total = 4 * LOST_NODE_STEPS
    assert f"Compute: {total:,} steps used vs {total:,} to run every trial" in output
    assert "trial failed" not in output

    # MLflow: one run per trial, each (metric, step) once, the sweep's parent run included.
    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name("lost-node")
    assert experiment is not None
    found = client.search_runs([experiment.experiment_id])
    trial_runs = [r for r in found if "trial_name" in r.data.tags]
    assert len(trial_runs) == len({r.data.tags["trial_name"] for r in trial_runs}) == 4
    assert len(found) == 5  # and the parent
    for run in trial_runs:
        history = client.get_metric_history(run.info.run_id, "val_acc")
        steps = [m.step for m in history]
        assert sorted(steps) == list(range(LOST_NODE_EVAL, LOST_NODE_STEPS + 1, LOST_NODE_EVAL))
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        repeated = db.execute(
            "SELECT run_uuid, key, step, COUNT(*) FROM metrics "
            "GROUP BY run_uuid, key, step HAVING COUNT(*) > 1"
        ).fetchall()
        sweep_metrics = db.execute("SELECT COUNT(*) FROM metrics WHERE key LIKE 'sweep/%'")
        assert sweep_metrics.fetchone()[0] > 0
    assert repeated == []
