"""Real Ray Tune sweeps (replayed recorded curves) logging to a real ``mlflow server``: what a
reviewer finds there (read back over MLflow's REST API too, as the UI reads it), and a server
stopped mid-sweep and restarted without losing anything."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import mlflow
import pytest
import ray
from mlflow_helpers import CURVES, MlflowServer, log_recorded_sweep
from ray import tune
from ray.tune.experiment import Trial

from grokschedule.adapters.control_channel import CONTROL_KEY
from grokschedule.app.runner import SweepSettings, run_sweep
from grokschedule.bench.replay_trainable import replay_trainable
from grokschedule.tracking import names
from grokschedule.tracking.logger import SweepLogger
from grokschedule.tracking.report import report_main
from grokschedule.tracking.spool import CURSOR, RECORDS, REJECTED, read_records
from tune_plugins import GrokCallback, GrokMLflowLoggerCallback, GrokScheduler

pytestmark = pytest.mark.slow
TRIALS = ["grokker_p47_wd1", "memorizer_p47_wd0", "delayed_grokker_p47_small"]
OUTCOMES = {
    "grokker_p47_wd1": "grokked at step 1650",
    "memorizer_p47_wd0": "stopped at step 900: never-grok",  # on P(grok), the grok predictor
    "delayed_grokker_p47_small": "grokked at step 2400 (extended by 400 steps past max_t)",
}
SCHEDULER = {
    "metric": "val_acc",
    "mode": "max",
    "time_attr": "step",
    "max_t": 2000,
    "max_extension": 1000,
    "patience_factor": 10.0,  # the rule timings the assertions were written for
    "judge_after": 2.0,
}


def rest(server: MlflowServer, path: str, body: dict[str, Any] | None = None) -> Any:
    """A call to the server's REST API (``/api/2.0/mlflow/...``): GET, or POST with ``body``."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{server.uri}/api/2.0/mlflow/{path}", data, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def rest_experiment(server: MlflowServer, name: str) -> tuple[str, dict[str, str]]:
    query = urllib.parse.urlencode({"experiment_name": name})
    experiment = rest(server, f"experiments/get-by-name?{query}")["experiment"]
    return experiment["experiment_id"], {t["key"]: t["value"] for t in experiment.get("tags", [])}


def rest_runs(server: MlflowServer, experiment_id: str) -> list[dict[str, Any]]:
    """Each run as ``{"id", "name", "tags", "params"}`` from ``runs/search``."""
    found = rest(server, "runs/search", {"experiment_ids": [experiment_id], "max_results": 100})
    return [
        {
            "id": run["info"]["run_id"],
            "name": run["info"]["run_name"],
            "tags": {t["key"]: t["value"] for t in run["data"].get("tags", [])},
            "params": {p["key"]: p["value"] for p in run["data"].get("params", [])},
        }
        for run in found["runs"]
    ]


def git_commits() -> set[str]:
    """The commits MLflow may take for this process: that of the checkout holding the main
    script (unless git ignores it, as a venv inside the checkout), else the working directory's."""
    commits = set()
    for where in (Path(sys.argv[0]).resolve().parent, Path.cwd()):
        done = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True
        )
        if done.returncode == 0:
            commits.add(done.stdout.strip())
    return commits


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_reviewer_finds_the_sweep_in_mlflow(
    server: MlflowServer, local_ray: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = run_sweep(
        SweepSettings(
            param_space={"curve_file": str(CURVES), "curve": tune.grid_search(TRIALS)},
            scheduler=SCHEDULER,
            trainable=replay_trainable,
            root=tmp_path,
            experiment="server-sweep",
            tracking_uri=server.uri,
            console_interval_s=1e6,
        )
    )
    steps = {r.config["curve"]: list(r.metrics_dataframe["step"]) for r in outcome.results}
    client = mlflow.MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("server-sweep")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags[names.ROLE] == "sweep"]
    trials = {r.data.params["curve"]: r for r in runs if r.data.tags[names.ROLE] == "trial"}
    assert sorted(trials) == sorted(TRIALS)

    assert parent.info.status == "FINISHED"
    params = parent.data.params
    assert (params["scheduler.max_t"], params["scheduler.metric"]) == ("2000", "val_acc")
    assert params["search_space.curve"] == f"grid_search({TRIALS})"
    metrics = parent.data.metrics
    assert (metrics["sweep/trials"], metrics["sweep/grokked"], metrics["sweep/stopped"]) == (
        3,
        2,
        1,
    )
    assert metrics["sweep/steps_used"] == 1650 + 900 + 2400
    assert metrics["sweep/steps_fifo"] == 6000
    assert parent.data.tags[names.SUMMARY].startswith("3 trials: 2 grokked, 1 stopped")
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {names.OVERVIEW_PNG, names.SUMMARY_MD, names.SUMMARY_HTML} <= parent_files

    for curve, run in trials.items():
        tags = run.data.tags
        assert tags[names.PARENT_RUN_ID] == parent.info.run_id
        assert run.info.status == "FINISHED"
        assert tags["trial_name"].startswith("replay_trainable_")
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert [m.step for m in history] == steps[curve]
        assert len(client.get_metric_history(run.info.run_id, "scheduler/score")) == len(
            steps[curve]
        )
        assert (tags[names.KICKS], tags[names.ROLLBACKS]) == ("0", "0")
        files = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {names.CURVES_PNG, names.TIMELINE_MD, names.TIMELINE_HTML, "grok"} <= files
        local = client.download_artifacts(run.info.run_id, names.DECISIONS_JSON, str(tmp_path))
        decisions = json.loads(Path(local).read_text())
        assert decisions[-1]["kind"] == "STOP" and decisions[-1]["signals"]
    assert {curve: run.data.tags[names.OUTCOME] for curve, run in trials.items()} == OUTCOMES
    assert trials["memorizer_p47_wd0"].data.tags[names.FINAL_PHASE] == "stalled"

    # What the UI reads: a model-development experiment (not the GenAI traces page), runs that
    # say who ran what from which commit, and names that lead with what varies.
    experiment_id, experiment_tags = rest_experiment(server, "server-sweep")
    assert experiment_tags[names.EXPERIMENT_KIND] == "custom_model_development"
    listed = rest_runs(server, experiment_id)
    assert len(listed) == 1 + len(TRIALS)
    commits = git_commits()
    for run in listed:
        tags = run["tags"]
        assert tags[names.USER] == parent.data.tags[names.USER] != ""
        assert tags[names.SOURCE_NAME] == sys.argv[0]
        assert tags[names.SOURCE_TYPE] == "LOCAL"
        if commits:  # the tests run in a checkout (CI's clone): the commit is on every run
            assert tags[names.GIT_COMMIT] in commits
    names_by_curve = {r["params"].get("curve"): r["name"] for r in listed}
    for curve in TRIALS:
        trial_id = trials[curve].data.tags[names.RUN_KEY].rsplit("/", 1)[-1]
        assert names_by_curve[curve] == f"curve={curve} ({trial_id})"

    capsys.readouterr()
    assert report_main(["--experiment", "server-sweep", "--tracking-uri", server.uri]) == 0
    text = capsys.readouterr().out
    assert "3 trials: 2 grokked, 1 stopped (1 extended); 4,950 steps used vs 6,000" in text
    assert "curve=memorizer_p47_wd0: stopped at step 900: never-grok" in text
    link = f"{server.uri}/#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}"
    assert f"; open {link}?workflowType=machine_learning\n" in text


def test_mlflow_stopped_mid_sweep_loses_nothing(
    server: MlflowServer, local_ray: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The server goes away once the trials are running and comes back only after they have
    all finished: training never waits for it, one warning says so, and everything arrives."""
    caplog.set_level(logging.WARNING, logger="grokschedule.tracking")
    spool = tmp_path / "spool"
    scheduler = GrokScheduler(**SCHEDULER)
    tracker = GrokMLflowLoggerCallback(
        scheduler,
        tracking_uri=server.uri,
        experiment_name="fault-sweep",
        spool_dir=spool,
        close_timeout_s=120,
    )
    journal = spool / tracker.sweep_id
    outage: dict[str, float] = {}

    def stop_then_restart() -> None:
        def count(op: str) -> int:
            return sum(r["op"] == op for r in read_records(journal))

        while not (journal / CURSOR).exists():  # something reached the server: stop it
            time.sleep(0.05)
        server.stop()
        outage["stopped"] = time.time()
        while count("end_run") < len(TRIALS):  # every trial ends while it is down
            time.sleep(0.2)
        outage["restarting"] = time.time()
        server.start()

    injector = threading.Thread(target=stop_then_restart)
    injector.start()
    tuner = tune.Tuner(
        replay_trainable,
        param_space={"curve_file": str(CURVES), "curve": tune.grid_search(TRIALS), "delay_s": 0.05},
        tune_config=tune.TuneConfig(scheduler=scheduler),
        run_config=tune.RunConfig(
            storage_path=str(tmp_path / "ray"),
            callbacks=[GrokCallback(scheduler), tracker],
            verbose=0,
        ),
    )
    results = tuner.fit()
    injector.join(timeout=180)

    # Training went on during the outage: every trial's last result predates the restart.
    last_results = [r.metrics["timestamp"] for r in results]
    assert outage["stopped"] < max(last_results) < outage["restarting"]
    unreachable = [
        r for r in caplog.records if "is unreachable (connection refused)" in r.getMessage()
    ]
    assert len(unreachable) == 1
    # Nothing lost: the journal is fully delivered, nothing refused, every result in MLflow.
    cursor = json.loads((journal / CURSOR).read_text())
    assert cursor["offset"] == (journal / RECORDS).stat().st_size
    assert not (journal / REJECTED).exists()
    client = mlflow.MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("fault-sweep")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 + len(TRIALS)
    for result in results:
        run_id = cursor["runs"][result.metrics["trial_id"]]
        history = client.get_metric_history(run_id, "val_acc")
        assert [m.step for m in history] == list(result.metrics_dataframe["step"])
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags[names.OUTCOME] == OUTCOMES[result.config["curve"]]
        assert names.CURVES_PNG in {a.path for a in client.list_artifacts(run_id)}
    parent = client.get_run(cursor["runs"][names.PARENT_KEY])
    assert parent.data.metrics["sweep/trials"] == len(TRIALS)
    assert parent.info.status == "FINISHED"


def test_an_existing_experiment_gets_its_kind_unless_it_has_one(
    server: MlflowServer, tmp_path: Path
) -> None:
    client = mlflow.MlflowClient(server.uri)
    client.create_experiment("made-before")  # e.g. by `mlflow experiments create`
    client.create_experiment("genai-app", tags={names.EXPERIMENT_KIND: "genai_development"})
    for experiment in ("made-before", "genai-app"):
        logger = SweepLogger(
            tmp_path / experiment,
            server.uri,
            experiment,
            "s1",
            metric="val_acc",
            threshold=0.95,
            max_t=2000,
            max_extension=1000,
            run_context={names.USER: "reviewer", names.SOURCE_NAME: "sweep.py"},
        )
        log_recorded_sweep(logger, TRIALS[:1])
        assert logger.end_sweep()
    assert rest_experiment(server, "made-before")[1][names.EXPERIMENT_KIND] == (
        "custom_model_development"
    )
    experiment_id, tags = rest_experiment(server, "genai-app")
    assert tags[names.EXPERIMENT_KIND] == "genai_development"  # the owner's choice stays
    for run in rest_runs(server, experiment_id):  # the context given is the one logged
        assert (run["tags"][names.USER], run["tags"][names.SOURCE_NAME]) == ("reviewer", "sweep.py")


def test_the_sweep_key_is_never_an_mlflow_param(server: MlflowServer, tmp_path: Path) -> None:
    """A trial's config carries the sweep's control key (GrokScheduler adds it): the trial's
    params leave it out and no record holds its secret; its name is its rounded parameters."""
    scheduler = GrokScheduler(**SCHEDULER, interventions=True)
    tracker = GrokMLflowLoggerCallback(
        scheduler, tracking_uri=server.uri, experiment_name="keyed", spool_dir=tmp_path
    )
    searched = {"weight_decay": 0.30000000000000004, "train_fraction": 0.5}
    trial = Trial(
        "modular_trainable",
        config={**searched, "p": 47},
        evaluated_params=searched,
        stub=True,
    )
    scheduler.on_trial_add(None, trial)
    key = trial.config[CONTROL_KEY]
    tracker.log_trial_start(trial)
    tracker.on_experiment_end([trial])
    runs = rest_runs(server, rest_experiment(server, "keyed")[0])
    (run,) = [r for r in runs if r["tags"][names.ROLE] == "trial"]
    assert run["params"] == {
        "weight_decay": "0.30000000000000004",
        "train_fraction": "0.5",
        "p": "47",
    }
    assert run["name"] == f"wd=0.3 frac=0.5 ({trial.trial_id})"
    journal = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert key.secret.hex().encode() not in journal and key.secret not in journal
    # Killed before its first result, the trial still gets its (empty) curves plot.
    assert names.CURVES_PNG in {
        a.path for a in mlflow.MlflowClient(server.uri).list_artifacts(run["id"])
    }
