"""Send a sweep's journal (``spool.Spool``) to MLflow from a background thread.

Why a thread and a journal rather than calls on Tune's event loop: Tune runs callbacks on its
driver loop, so a slow or absent server would stall every trial's scheduling. Here the driver only
appends to a local file; this thread sends in order, coalescing metric batches, and when MLflow is
unreachable it warns once, keeps the records, and retries with a capped backoff until the server
is back. Every send is idempotent (runs are found again by their ``grok.run_key`` tag, metrics
carry fixed timestamps that MLflow deduplicates, tags and artifacts overwrite), so a record sent
twice after a lost reply does no harm. A record MLflow *refuses* (a 4xx: bad name, changed param)
is set aside in ``rejected.jsonl`` with the error instead of blocking the ones behind it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import requests
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from grokschedule.tracking import names
from grokschedule.tracking.spool import REJECTED, Cursor, Spool

logger = logging.getLogger("grokschedule.tracking")

# MLflow's defaults (120 s timeout, 7 retries with backoff factor 2) make one call to a dead
# server cost minutes; the journal already retries, so each call only needs to fail fast. And the
# "View run at" line MLflow prints per finished run would interleave with Tune's console.
CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100  # MLflow's log_batch limits
BATCHED = ("metrics", "tags")  # ops sent together; params alone: a refused one rejects its batch
MAX_GROUP = 200  # records per group


def configure_mlflow_client() -> None:
    """Bound MLflow's HTTP calls in this process (``CLIENT_DEFAULTS``), unless the user set
    these variables."""
    for name, value in CLIENT_DEFAULTS.items():
        os.environ.setdefault(name, value)


def is_transient(error: BaseException) -> bool:
    """True when retrying later may succeed: server away, overloaded, or refusing credentials."""
    if isinstance(error, MlflowException):
        status = error.get_http_status_code()
        return status >= 500 or status in (401, 403, 408, 429)
    if isinstance(error, requests.HTTPError) and error.response is not None:
        status = error.response.status_code
        return status >= 500 or status in (401, 403, 408, 429)
    return isinstance(error, requests.RequestException | ConnectionError | TimeoutError)


class Sender:
    """Drains one spool to one MLflow tracking URI."""

    def __init__(self, spool: Spool, tracking_uri: str, experiment: str) -> None:
        configure_mlflow_client()
        self.spool = spool
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.client = MlflowClient(tracking_uri)
        self.cursor: Cursor = spool.load_cursor()
        self.down_since: float | None = None
        self.refused = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one pass ------------------------------------------------------------------------------
    def drain(self) -> bool:
        """Send everything pending; False if MLflow became unreachable (records stay spooled)."""
        records = self.spool.pending(self.cursor.offset)
        i = 0
        while i < len(records):
            group = _group(records, i)
            for unit in _by_run([record for record, _ in group]):
                try:
                    self._send(unit)
                except Exception as error:
                    if is_transient(error):
                        self._went_down(error)
                        return False  # the whole group again later: every send is idempotent
                    self._refuse(unit, error)
            self.cursor.offset = group[-1][1]
            self.spool.commit(self.cursor)
            i += len(group)
        self._came_back()
        return True

    def pending(self) -> bool:
        return self.cursor.offset < self.spool.size()

    # -- background thread ----------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="grokschedule-mlflow", daemon=True)
        self._thread.start()

    def flush(self, timeout_s: float) -> bool:
        """Wait until all records appended so far are sent; False if ``timeout_s`` ran out."""
        deadline = time.monotonic() + timeout_s
        while self.pending():
            if time.monotonic() > deadline:
                return False
            self.spool.appended.set()  # retry now rather than after the backoff
            time.sleep(0.05)
        return True

    def close(self, timeout_s: float) -> bool:
        """Flush for at most ``timeout_s``, then stop the thread; False if records are left."""
        done = self.flush(timeout_s)
        self._stop.set()
        self.spool.appended.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.refused:
            logger.warning(
                "MLflow refused %d record(s) of this sweep; they are kept in %s.",
                self.refused,
                self.spool.directory / REJECTED,
            )
        if not done:
            logger.warning(
                "MLflow at %s is still unreachable: %d records are not sent yet. They "
                "are kept in %s; `grokschedule report --spool %s --tracking-uri %s --sync` sends "
                "them, and `report --spool` reads them meanwhile.",
                self.tracking_uri,
                len(self.spool.pending(self.cursor.offset)),
                self.spool.directory,
                self.spool.directory,
                self.tracking_uri,
            )
        return done

    def _loop(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            self.spool.appended.clear()
            try:
                sent = self.drain()
            except Exception:  # a bug here must not silently end delivery for the sweep
                logger.exception("grokschedule: sending %s failed", self.spool.directory)
                sent = False
            if sent:
                backoff = 0.5
                self.spool.appended.wait(timeout=5.0)
            else:
                self.spool.appended.wait(timeout=backoff)
                backoff = min(backoff * 2, 10.0)

    def _went_down(self, error: BaseException) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            logger.warning(
                "MLflow at %s is unreachable (%s). Training goes on; records are kept in %s and "
                "sent when it is back.",
                self.tracking_uri,
                why(error),
                self.spool.directory,
            )

    def _refuse(self, records: list[dict[str, Any]], error: BaseException) -> None:
        message = f"{type(error).__name__}: {error}"
        self.spool.reject(records, message)
        if not self.refused:
            logger.warning(
                "MLflow refused a record (%s). It is kept in %s, with any further ones.",
                message[:300],
                self.spool.directory / REJECTED,
            )
        self.refused += len(records)

    def _came_back(self) -> None:
        if self.down_since is not None:
            logger.info(
                "MLflow at %s is reachable again after %.0f s; buffered records sent.",
                self.tracking_uri,
                time.monotonic() - self.down_since,
            )
            self.down_since = None

    # -- MLflow calls ---------------------------------------------------------------------------
    def _send(self, batch: list[dict[str, Any]]) -> None:
        op = "batch" if batch[0]["op"] in BATCHED else batch[0]["op"]
        handler: Callable[[list[dict[str, Any]]], None] = getattr(self, f"_op_{op}")
        handler(batch)

    def _op_sweep(self, batch: list[dict[str, Any]]) -> None:
        self._experiment_id()

    def _op_create_run(self, batch: list[dict[str, Any]]) -> None:
        (record,) = batch
        experiment_id = self._experiment_id()
        run_key = record["tags"][names.RUN_KEY]
        found = self.client.search_runs(
            [experiment_id], filter_string=f"tags.`{names.RUN_KEY}` = '{run_key}'", max_results=1
        )
        if found:
            self.cursor.runs[record["key"]] = found[0].info.run_id
            return
        tags = dict(record["tags"])
        if record.get("parent"):
            tags[names.PARENT_RUN_ID] = self.cursor.runs[record["parent"]]
        run = self.client.create_run(
            experiment_id, start_time=record["ts"], tags=tags, run_name=record["name"]
        )
        self.cursor.runs[record["key"]] = run.info.run_id

    def _op_params(self, batch: list[dict[str, Any]]) -> None:
        (record,) = batch
        params = [Param(k, v) for k, v in record["params"].items()]
        for i in range(0, len(params), MAX_PARAMS):
            self.client.log_batch(self._run(record), params=params[i : i + MAX_PARAMS])

    def _op_batch(self, batch: list[dict[str, Any]]) -> None:
        """One run's metrics and tags from consecutive records in few ``log_batch`` calls:
        catching up after an outage, or on a store with a commit per call (sqlite), costs a
        few calls instead of one per result."""
        run_id = self._run(batch[0])
        metrics: list[Metric] = []
        tags: dict[str, str] = {}
        for record in batch:
            if record["op"] == "metrics":
                metrics += [
                    Metric(k, v, record["ts"], record["step"]) for k, v in record["values"].items()
                ]
            else:
                tags.update(record["tags"])  # in order: the latest value of a tag wins
        tag_list = [RunTag(k, v) for k, v in tags.items()]
        for i in range(0, len(metrics), MAX_METRICS):
            self.client.log_batch(run_id, metrics=metrics[i : i + MAX_METRICS])
        for i in range(0, len(tag_list), MAX_TAGS):
            self.client.log_batch(run_id, tags=tag_list[i : i + MAX_TAGS])

    def _op_artifact(self, batch: list[dict[str, Any]]) -> None:
        (record,) = batch
        local = self.spool.directory / record["file"]
        self.client.log_artifact(self._run(record), str(local), record["artifact_path"] or None)

    def _op_end_run(self, batch: list[dict[str, Any]]) -> None:
        (record,) = batch
        self.client.set_terminated(self._run(record), record["status"], end_time=record["ts"])

    def _run(self, record: dict[str, Any]) -> str:
        return self.cursor.runs[record["key"]]

    def _experiment_id(self) -> str:
        """The experiment's id, creating it if missing, and tagged as one of model development
        (``names.EXPERIMENT_KIND``) unless it already says what kind it is."""
        if self.cursor.experiment_id is None:
            kind = {names.EXPERIMENT_KIND: names.CUSTOM_MODEL_DEVELOPMENT}
            experiment = self.client.get_experiment_by_name(self.experiment)
            if experiment is None:
                self.cursor.experiment_id = self.client.create_experiment(
                    self.experiment, tags=kind
                )
            else:
                if names.EXPERIMENT_KIND not in experiment.tags:
                    self.client.set_experiment_tag(experiment.experiment_id, *kind.popitem())
                self.cursor.experiment_id = experiment.experiment_id
        return self.cursor.experiment_id


def why(error: BaseException) -> str:
    """A few words on why a call failed, from MLflow's long exception texts."""
    text = str(error)
    for marker, words in (
        ("Connection refused", "connection refused"),
        ("timed out", "timed out"),
        ("Name or service not known", "unknown host"),
        ("401", "401 unauthorized: check MLFLOW_TRACKING_USERNAME/PASSWORD"),
        ("403", "403 forbidden"),
    ):
        if marker in text:
            return words
    return text.splitlines()[0][:200] if text else type(error).__name__


def _by_run(batch: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """A group split per run, so that a run MLflow refuses does not take the others along."""
    if batch[0]["op"] not in BATCHED:
        return [batch]
    runs: dict[str, list[dict[str, Any]]] = {}
    for record in batch:
        runs.setdefault(record["key"], []).append(record)
    return list(runs.values())


def _group(
    records: list[tuple[dict[str, Any], int]], start: int
) -> list[tuple[dict[str, Any], int]]:
    """The record at ``start``, with the metric and tag records right after it (any run)."""
    end = start + 1
    if records[start][0]["op"] in BATCHED:
        while end < len(records) and end - start < MAX_GROUP and records[end][0]["op"] in BATCHED:
            end += 1
    return records[start:end]
