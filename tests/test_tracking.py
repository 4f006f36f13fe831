"""SweepLogger, the journal and the report against real MLflow stores, without Ray or a server:
recorded curves go through the real GrokPolicy (with kicks) into an sqlite store, into an
unreachable server, and back out through ``grokschedule report``."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import mlflow
import pytest
from mlflow_helpers import log_recorded_sweep

from grokschedule.app.runner import ensure_experiment, local_tracking_uri
from grokschedule.bench.soak_mlflow import free_port
from grokschedule.core.commands import KICK, Command
from grokschedule.core.decision import Cause, Decision, DecisionKind
from grokschedule.core.kicks import LR_MULTIPLY, Kick
from grokschedule.core.phases import Phase
from grokschedule.core.summary import judge
from grokschedule.tracking import names
from grokschedule.tracking.logger import SweepLogger
from grokschedule.tracking.report import SweepReport, render, report_main, sync
from grokschedule.tracking.spool import RECORDS, REJECTED
from grokschedule.tracking.timeline import kick_effects, timeline_markdown
from grokschedule.tracking.views import mlflow_view, spool_view

CURVES = ["grokker_p47_wd1", "memorizer_p47_wd0", "nogrok_p47_wd01"]
PNG = b"\x89PNG\r\n\x1a\n"


def _logger(
    root: Path, uri: str, experiment: str = "tracking-test", **options: float
) -> SweepLogger:
    return SweepLogger(
        root / "spool",
        uri,
        experiment,
        "sweep1",
        metric="val_acc",
        threshold=0.95,
        max_t=3000,
        max_extension=1500,
        **options,
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One sqlite store for the module (creating its tables takes seconds); one experiment
    per test."""
    root = tmp_path_factory.mktemp("sqlite")
    return root, local_tracking_uri(root)


def _experiment(store: tuple[Path, str], name: str) -> str:
    root, uri = store
    ensure_experiment(uri, name, root / "mlartifacts" / name)
    return uri


@pytest.fixture(scope="module")
def logged(store: tuple[Path, str]) -> tuple[Path, str, dict[str, int]]:
    """One sweep of three recorded curves, with kicks, logged to the sqlite store."""
    root = store[0]
    uri = _experiment(store, "tracking-test")
    logger = _logger(root, uri)
    counts = log_recorded_sweep(logger, CURVES, kicks=True)
    assert logger.end_sweep() is True
    return root, uri, counts


def test_parent_and_nested_trial_runs(logged: tuple[Path, str, dict[str, int]]) -> None:
    root, uri, counts = logged
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("tracking-test")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags[names.ROLE] == "sweep"]
    trials = {r.info.run_name: r for r in runs if r.data.tags[names.ROLE] == "trial"}
    assert sorted(trials) == sorted(CURVES)
    assert parent.info.status == "FINISHED"
    # ensure_experiment made it untagged; the logger says what kind of experiment it is.
    assert experiment.tags[names.EXPERIMENT_KIND] == names.CUSTOM_MODEL_DEVELOPMENT
    for run in runs:
        assert run.data.tags[names.SOURCE_TYPE] == "LOCAL" and names.USER in run.data.tags
    assert parent.data.params["scheduler.max_t"] == "3000"
    assert parent.data.params["search_space.curve"].startswith("grid_search(")
    totals = parent.data.metrics
    assert (totals["sweep/trials"], totals["sweep/grokked"], totals["sweep/stopped"]) == (3, 1, 2)
    assert totals["sweep/steps_fifo"] == 9000
    assert totals["sweep/steps_used"] == 1650 + 1150 + 1650
    assert totals["sweep/kicks"] == 2  # the two runs not predicted to grok in budget
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {names.OVERVIEW_PNG, names.SUMMARY_MD, names.SUMMARY_HTML} <= parent_files

    for name, run in trials.items():
        tags = run.data.tags
        assert tags[names.PARENT_RUN_ID] == parent.info.run_id
        assert run.info.status == "FINISHED"
        assert tags[names.VERDICT].startswith("STOP: ")
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert [m.step for m in history] == [50 * (i + 1) for i in range(counts[name])]
        assert len(client.get_metric_history(run.info.run_id, "scheduler/score")) == counts[name]
        assert client.get_metric_history(run.info.run_id, "scheduler/progress")
        files = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {names.CURVES_PNG, names.TIMELINE_MD, names.TIMELINE_HTML} <= files
        png = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id,
            artifact_path=names.CURVES_PNG,
            dst_path=str(root / name),
            tracking_uri=uri,
        )
        assert Path(png).read_bytes().startswith(PNG)

    grokker, memorizer = trials["grokker_p47_wd1"].data.tags, trials["memorizer_p47_wd0"].data.tags
    assert grokker[names.OUTCOME] == "grokked at step 1650"
    assert (grokker[names.FINAL_PHASE], grokker[names.GROK_STEP]) == ("grokked", "1650")
    assert memorizer[names.OUTCOME] == "stopped at step 1150: never-grok"
    assert (memorizer[names.KICKS], memorizer[names.ROLLBACKS]) == ("1", "0")
    timeline = mlflow.artifacts.load_text(
        f"{trials['memorizer_p47_wd0'].info.artifact_uri}/{names.TIMELINE_MD}"
    )
    assert "| step | decision | phase | reason | signals | kick | rollback |" in timeline
    assert "| 300 | KICK | plateau |" in timeline
    assert "grokfast alpha=0.98 lamb=2 for the rest of the run" in timeline


def test_report_reads_mlflow_and_the_spool_alike(
    logged: tuple[Path, str, dict[str, int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, uri, _ = logged
    assert report_main(["--experiment", "tracking-test", "--tracking-uri", uri]) == 0
    from_mlflow = capsys.readouterr().out
    assert report_main(["--spool", str(root / "spool")]) == 0
    from_spool = capsys.readouterr().out
    assert "3 trials: 1 grokked, 2 stopped (2 kicks); 4,450 steps used vs 9,000" in from_mlflow
    # Trials are named by what varies across the sweep: here the recorded curve.
    assert "  curve=grokker_p47_wd1: grokked at step 1650" in from_mlflow
    assert "  curve=memorizer_p47_wd0: stopped at step 1150: never-grok" in from_mlflow
    assert (
        "  curve=memorizer_p47_wd0 at step 300: grokfast alpha=0.98 lamb=2 for the rest of the "
        "run -> no transition evidence before the stop at step 1150 (never-grok)"
    ) in from_mlflow
    # Same account from either source, apart from where it was read.
    assert from_mlflow.splitlines()[2:] == from_spool.splitlines()[2:]

    out = tmp_path / "report.html"
    args = ["--experiment", "tracking-test", "--tracking-uri", uri, "--format", "html"]
    assert report_main([*args, "--out", str(out)]) == 0
    page = out.read_text()
    assert page.count("data:image/png;base64,") == 1 + len(CURVES)  # overview + each trial
    assert "<th>kick</th>" in page
    assert report_main([*args[:4], "--format", "markdown"]) == 0
    markdown = capsys.readouterr().out
    assert "| curve=grokker_p47_wd1 | grokked at step 1650 | 1650 | 1650 |" in markdown
    assert "### curve=grokker_p47_wd1\n\nRun `grokker_p47_wd1`: grokked at step 1650" in markdown
    assert report_main(["--experiment", "nope", "--tracking-uri", uri]) == 2


def test_unreachable_mlflow_costs_nothing_loses_nothing(
    store: tuple[Path, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that is not there: logging stays instant, one warning, the journal keeps it
    all, ``report --spool`` reads it, and ``sync`` delivers it once a store is reachable."""
    dead = f"http://127.0.0.1:{free_port()}"
    caplog.set_level(logging.WARNING, logger="grokschedule.tracking")
    logger = _logger(tmp_path, dead, "unreachable", close_timeout_s=3)
    started = time.monotonic()
    counts = log_recorded_sweep(logger, CURVES[:2])
    logging_s = time.monotonic() - started  # plots run in the background
    assert logger.end_sweep() is False
    assert logging_s < 5.0, logging_s
    warnings = [r.getMessage() for r in caplog.records if "is unreachable" in r.getMessage()]
    assert warnings == [
        f"MLflow at {dead} is unreachable (connection refused). Training goes on; records are "
        f"kept in {tmp_path / 'spool' / 'sweep1'} and sent when it is back."
    ]
    assert any("still unreachable" in r.getMessage() for r in caplog.records)

    started = time.monotonic()
    assert report_main(["--experiment", "unreachable", "--tracking-uri", dead]) == 2
    assert time.monotonic() - started < 30

    directory = tmp_path / "spool" / "sweep1"
    report = SweepReport.from_view(spool_view(directory))
    assert [t.outcome for t in report.trials] == [
        "grokked at step 1650",
        "stopped at step 900: never-grok",  # P(grok) under stop_below (the grok predictor)
    ]

    uri = _experiment(store, "unreachable")
    assert sync(directory, uri) is True
    assert not (directory / REJECTED).exists()
    view = mlflow_view(uri, "unreachable")
    assert {t.name: len(t.history("val_acc")) for t in view.trials} == counts
    assert (
        render(SweepReport.from_view(view), "text").splitlines()[2:]
        == render(report, "text").splitlines()[2:]
    )


def test_a_restarted_driver_continues_the_same_runs(
    store: tuple[Path, str], tmp_path: Path
) -> None:
    uri = _experiment(store, "restart")
    first = _logger(tmp_path, uri, "restart")
    first.start_sweep("resumed sweep", {}, {})
    first.start_trial("t1", "t1", {"lr": 0.1})
    first.log_result("t1", 50, {"val_acc": 0.1, "train_loss": 1.0})
    first.close()  # the driver dies here; Tune restores and the same sweep id comes back
    second = _logger(tmp_path, uri, "restart")
    second.start_sweep("resumed sweep", {}, {})
    second.start_trial("t1", "t1", {"lr": 0.1})
    second.log_result("t1", 100, {"val_acc": 0.2, "train_loss": 0.5})
    second.end_trial("t1", "t1", [])
    assert second.end_sweep()
    view = mlflow_view(uri, "restart")
    (trial,) = view.trials
    assert trial.history("val_acc") == [(50, 0.1), (100, 0.2)]
    assert trial.tags[names.STEPS_USED] == "100"
    records = [json.loads(line) for line in (tmp_path / "spool" / "sweep1" / RECORDS).open()]
    assert sum(r["op"] == "create_run" for r in records) == 2  # parent + t1, once each


def test_a_resumed_trial_s_repeated_steps_are_logged_once(
    store: tuple[Path, str], tmp_path: Path
) -> None:
    uri = _experiment(store, "repeated")
    logger = _logger(tmp_path, uri, "repeated")
    logger.start_sweep("repeated steps", {}, {})
    logger.start_trial("t1", "t1", {"lr": 0.1})
    for step, value in [(50, 0.1), (100, 0.2), (150, 0.3)]:
        logger.log_result("t1", step, {"val_acc": value})
    logger.start_trial("t1", "t1", {"lr": 0.1})  # retried from its checkpoint at step 50
    for step, value in [(100, 0.25), (150, 0.35), (200, 0.4)]:
        logger.log_result("t1", step, {"val_acc": value})
    logger.end_trial("t1", "t1", [])
    assert logger.end_sweep()
    (trial,) = mlflow_view(uri, "repeated").trials
    assert trial.history("val_acc") == [(50, 0.1), (100, 0.2), (150, 0.3), (200, 0.4)]


def test_sweep_totals_are_logged_once_per_step_through_a_retry_and_a_restart(
    store: tuple[Path, str], tmp_path: Path
) -> None:
    """The parent run's sweep/* totals: once per step, when they change. Before, they were
    logged at step = trials ended, so the sweep's end repeated the last trial's step and a trial
    ended again (a retried errored trial) repeated its own."""
    uri = _experiment(store, "totals")
    first = _logger(tmp_path, uri, "totals")
    first.start_sweep("retried sweep", {}, {})
    for key in ("t1", "t2"):
        first.start_trial(key, key, {"lr": 0.1})
        first.log_result(key, 50, {"val_acc": 0.1})
    first.end_trial("t1", "t1", [], error="node lost")  # step 1: one failed, one running
    first.start_trial("t1", "t1", {"lr": 0.1})  # retried from its checkpoint
    first.log_result("t1", 100, {"val_acc": 0.2})
    first.end_trial("t1", "t1", [])  # step 2: t1 no longer failed
    first.close()  # the driver dies; a restored one resumes the journal
    second = _logger(tmp_path, uri, "totals")
    second.start_sweep("retried sweep", {}, {})
    second.log_result("t2", 100, {"val_acc": 0.2})
    second.end_trial("t2", "t2", [])  # step 3: none running
    assert second.end_sweep()  # nothing changed since step 3: no step 4, no second step 3
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("totals")
    (parent,) = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags[names.ROLE] == "sweep"
    ]
    keys = [k for k in parent.data.metrics if k.startswith(names.SWEEP_PREFIX)]
    assert "sweep/failed" in keys and "sweep/running" in keys
    for key in keys:
        history = client.get_metric_history(parent.info.run_id, key)
        assert sorted(m.step for m in history) == [1, 2, 3], key
    failed = client.get_metric_history(parent.info.run_id, "sweep/failed")
    running = client.get_metric_history(parent.info.run_id, "sweep/running")
    assert [m.value for m in sorted(failed, key=lambda m: m.step)] == [1, 0, 0]
    assert [m.value for m in sorted(running, key=lambda m: m.step)] == [1, 1, 0]
    assert parent.data.metrics["sweep/trials"] == 2


def test_credentials_come_from_the_environment_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="MLFLOW_TRACKING_USERNAME"):
        _logger(tmp_path, "http://alice:s3cret@127.0.0.1:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret-in-env")
    logger = _logger(tmp_path, f"http://127.0.0.1:{free_port()}", close_timeout_s=0)
    log_recorded_sweep(logger, CURVES[:1])
    logger.end_sweep()
    journal = b"".join(p.read_bytes() for p in (tmp_path / "spool").rglob("*") if p.is_file())
    assert b"s3cret-in-env" not in journal


def test_verdicts_and_kick_effects() -> None:
    def decision(
        step: float, kind: str, phase: str, reason: str = "", cause: Cause = Cause.CONTINUE, **extra
    ) -> Decision:
        return Decision(DecisionKind(kind), cause, reason, step, Phase(phase), 0.5, {}, **extra)

    lr_kick = Kick(LR_MULTIPLY, {"factor": 3.0}, duration_steps=300)
    log = [
        decision(100, "CONTINUE", "plateau"),
        decision(900, "KICK", "plateau", "kick lr", Cause.KICK, command=Command(0, KICK, lr_kick)),
        decision(1000, "ROLLBACK", "plateau", "rollback: train_loss rose 40%", Cause.ROLLBACK),
        decision(1200, "KICK", "plateau", "kick lr", Cause.KICK, command=Command(2, KICK, lr_kick)),
        decision(1500, "CONTINUE", "transition"),
        decision(3400, "EXTEND", "transition", cause=Cause.EXTENDED),
        decision(
            3600, "STOP", "grokked", "grokked at step 3600: val_acc reached 0.95", Cause.GROKKED
        ),
    ]
    records = [d.to_dict() for d in log]
    verdict = judge(log, 3600, max_t=3000)
    assert verdict.outcome == "grokked at step 3600 (extended by 600 steps past max_t)"
    assert (verdict.kicks, verdict.rollbacks, verdict.category) == (2, 1, "grokked")
    assert [(e.kick, e.effect) for e in kick_effects(records)] == [
        ("lr_multiply factor=3 for 300 steps", "rolled back at step 1000: train_loss rose 40%"),
        ("lr_multiply factor=3 for 300 steps", "transition at step 1500"),
    ]
    assert "| 1000 | ROLLBACK | plateau | rollback: train_loss rose 40% |" in timeline_markdown(
        "t", verdict, records
    )
    failed = judge(log[:2], 950, max_t=3000, error="RuntimeError: CUDA out of memory")
    assert failed.outcome == "failed at step 950: RuntimeError: CUDA out of memory"
    ended = judge([decision(400, "CONTINUE", "plateau")], 400, max_t=3000)
    assert (ended.category, ended.outcome) == ("ended", "ended at step 400 in plateau")


def test_a_refused_record_is_set_aside_without_blocking_the_rest(
    store: tuple[Path, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """MLflow refuses to change a logged param (as a kick changing ``lr`` in a trial's config
    would): that record goes to rejected.jsonl with the error; the records after it arrive."""
    caplog.set_level(logging.WARNING, logger="grokschedule.tracking")
    uri = _experiment(store, "refusal")
    logger = _logger(tmp_path, uri, "refusal")
    logger.start_sweep("refusals", {}, {})
    logger.start_trial("t1", "t1", {"lr": 0.1})
    logger.spool.append({"op": "params", "key": "t1", "params": {"lr": "0.3"}})
    logger.log_result("t1", 50, {"val_acc": 0.5})
    logger.end_trial("t1", "t1", [])
    assert logger.end_sweep()
    (rejected,) = [json.loads(line) for line in (logger.directory / REJECTED).open()]
    assert rejected["record"]["params"] == {"lr": "0.3"}
    assert "INVALID_PARAMETER_VALUE" in rejected["error"] or "lr" in rejected["error"]
    (trial,) = mlflow_view(uri, "refusal").trials
    assert trial.params["lr"] == "0.1"
    assert trial.history("val_acc") == [(50, 0.5)]
    assert trial.tags[names.STEPS_USED] == "50"
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 2  # when it happened, and the count at the end
