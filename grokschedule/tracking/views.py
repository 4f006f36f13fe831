"""Read a logged sweep back, from MLflow or from its local spool, into the same shape.

The report, the end-of-sweep summary and a resumed logger all read sweeps through these views, so
what `grokschedule report --spool` shows while MLflow is away is what MLflow shows later.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from grokschedule.tracking import names
from grokschedule.tracking.spool import RECORDS, read_records

Series = list[tuple[float, float]]


def ui_url(base: str, experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI page of an experiment's runs (or of one run) at ``base`` (the server's
    address): with ``workflowType=machine_learning``, which MLflow 3's UI needs to open on the
    runs table rather than its GenAI overview; the ``mlflow.experimentKind`` tag alone does not
    do it in 3.17."""
    page = f"experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{base.rstrip('/')}/#/{page}?workflowType=machine_learning"


@dataclass
class RunView:
    """One run: what MLflow's run page shows, plus lazy access to histories and artifacts."""

    key: str
    name: str
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # latest values
    history: Callable[[str], Series] = lambda key: []
    artifact: Callable[[str], bytes | None] = lambda path: None

    def decisions(self) -> list[dict[str, Any]]:
        data = self.artifact(names.DECISIONS_JSON)
        return [] if data is None else list(json.loads(data))


@dataclass
class SweepView:
    experiment: str
    sweep_id: str
    source: str  # where it was read from, for the report header
    parent: RunView
    trials: list[RunView]
    url: str | None = None  # the sweep run in MLflow's UI, when read from a server


# -- the local spool ------------------------------------------------------------------------------
def spool_view(directory: Path) -> SweepView:
    """Replay a sweep's journal (see ``spool``) into runs, without any network."""
    directory = Path(directory)
    header: dict[str, Any] = {}
    runs: dict[str, RunView] = {}
    series: dict[str, dict[str, Series]] = {}
    files: dict[str, dict[str, Path]] = {}
    for record in read_records(directory):
        op = record["op"]
        if op == "sweep":
            header = record
            continue
        key = record["key"]
        if op == "create_run":
            runs[key] = RunView(key=key, name=record["name"])
            runs[key].tags.update(record["tags"])
            series[key], files[key] = {}, {}
            continue
        run = runs[key]
        if op == "params":
            run.params.update(record["params"])
        elif op == "tags":
            run.tags.update(record["tags"])
        elif op == "metrics":
            run.metrics.update(record["values"])
            for name, value in record["values"].items():
                series[key].setdefault(name, []).append((record["step"], value))
        elif op == "artifact":
            name = Path(record["file"]).name
            path = f"{record['artifact_path']}/{name}" if record["artifact_path"] else name
            files[key][path] = directory / record["file"]
    for key, run in runs.items():
        run.history = _series_reader(series[key])
        run.artifact = _file_reader(files[key])
    if names.PARENT_KEY not in runs:
        raise ValueError(f"{directory / RECORDS} holds no sweep run")
    return SweepView(
        experiment=header.get("experiment", ""),
        sweep_id=header.get("sweep_id", directory.name),
        source=f"spool {directory}",
        parent=runs[names.PARENT_KEY],
        trials=[run for key, run in runs.items() if key != names.PARENT_KEY],
    )


def _series_reader(series: dict[str, Series]) -> Callable[[str], Series]:
    return lambda name: list(series.get(name, []))


def _file_reader(files: dict[str, Path]) -> Callable[[str], bytes | None]:
    return lambda path: files[path].read_bytes() if path in files else None


def find_spool(root: Path, experiment: str | None = None, sweep: str | None = None) -> Path:
    """A sweep's spool directory: ``root`` itself, or the latest matching sweep under it."""
    root = Path(root)
    if (root / RECORDS).exists():
        return root
    candidates = []
    for records in root.glob(f"*/{RECORDS}"):
        header = next(read_records(records.parent), {})
        if experiment and header.get("experiment") != experiment:
            continue
        if sweep and header.get("sweep_id") != sweep:
            continue
        candidates.append(records)
    if not candidates:
        raise FileNotFoundError(f"no sweep spool under {root} for experiment {experiment!r}")
    return max(candidates, key=lambda p: p.stat().st_mtime).parent


# -- MLflow ---------------------------------------------------------------------------------------
def mlflow_view(tracking_uri: str, experiment: str, sweep: str | None = None) -> SweepView:
    """The latest sweep of ``experiment`` (or the one whose run id, name or sweep id is
    ``sweep``) with its nested trial runs."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise LookupError(f"no MLflow experiment {experiment!r} at {tracking_uri}")
    parents = list(
        client.search_runs(
            [found.experiment_id],
            filter_string=f"tags.`{names.ROLE}` = 'sweep'",
            order_by=["attributes.start_time DESC"],
        )
    )
    if sweep is not None:
        parents = [
            p
            for p in parents
            if sweep in (p.info.run_id, p.info.run_name, p.data.tags.get(names.SWEEP_ID))
        ]
    if not parents:
        raise LookupError(f"no grokschedule sweep run in experiment {experiment!r}")
    parent = parents[0]
    children = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{names.PARENT_RUN_ID}` = '{parent.info.run_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=10_000,
    )
    served = urlsplit(tracking_uri).scheme in ("http", "https")  # the server has the UI
    return SweepView(
        experiment=experiment,
        sweep_id=parent.data.tags.get(names.SWEEP_ID, parent.info.run_id),
        source=f"MLflow {tracking_uri}",
        parent=_run_view(client, parent),
        trials=[_run_view(client, run) for run in children],
        url=ui_url(tracking_uri, found.experiment_id, parent.info.run_id) if served else None,
    )


def _run_view(client: MlflowClient, run: Any) -> RunView:
    run_id = run.info.run_id

    def history(name: str) -> Series:
        return [(m.step, m.value) for m in client.get_metric_history(run_id, name)]

    def artifact(path: str) -> bytes | None:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = client.download_artifacts(run_id, path, tmp)
            except (MlflowException, OSError, requests.HTTPError):  # missing, or store away
                return None
            return Path(local).read_bytes()

    return RunView(
        key=run.data.tags.get(names.RUN_KEY, run_id).rsplit("/", 1)[-1],
        name=run.info.run_name or run_id,
        tags=dict(run.data.tags),
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        history=history,
        artifact=artifact,
    )
