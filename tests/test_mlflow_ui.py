"""The MLflow UI, in a real headless Chromium, shows a sweep's parent run with its nested trial
runs and totals, a trial's curves plot, and, from the link the report gives, the experiment's
runs table rather than MLflow 3's GenAI overview. Skipped when Chromium is not installed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow_helpers import MlflowServer, log_recorded_sweep

from grokschedule.tracking.logger import SweepLogger
from grokschedule.tracking.spool import CURSOR
from grokschedule.tracking.views import ui_url

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("chromium") is None,
        reason="needs Chromium for the UI check (Debian: apt-get install -y chromium)",
    ),
]
CURVES = ["grokker_p47_wd1", "delayed_grokker_p47_small", "memorizer_p47_wd0", "nogrok_p47_wd01"]
# Flags that work without network access or a display.
CHROMIUM = [
    "chromium",
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,1150",
]


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory):
    """A server holding one recorded sweep; yields (server, MLflow run id by local key)."""
    root = tmp_path_factory.mktemp("mlflow-ui")
    server = MlflowServer(root)
    server.start()
    logger = SweepLogger(
        root / "spool",
        server.uri,
        "ui-sweep",
        "ui1",
        metric="val_acc",
        threshold=0.95,
        max_t=3000,
        max_extension=1500,
    )
    log_recorded_sweep(logger, CURVES, kicks=True)
    assert logger.end_sweep()
    runs = json.loads((root / "spool" / "ui1" / CURSOR).read_text())["runs"]
    yield server, runs
    server.stop()


def _chromium(tmp_path: Path, url: str, action: str, budget_ms: int) -> str:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    done = subprocess.run(
        [
            *CHROMIUM,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
            action,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


def _dom(tmp_path: Path, url: str, ready: Callable[[str], bool]) -> str:
    """The rendered DOM once ``ready`` holds: MLflow's UI is a JS app that loads data after the
    page, so give it virtual time, and more if it was not enough."""
    dom = ""
    for budget_ms in (15_000, 40_000, 90_000):
        dom = _chromium(tmp_path, url, "--dump-dom", budget_ms)
        if ready(dom):
            break
    return dom


def test_ui_shows_the_sweep_runs_and_a_plot(ui, tmp_path: Path) -> None:
    server, runs = ui
    parent_url = f"{server.uri}/#/experiments/1/runs/{runs['sweep']}"
    parent = _dom(tmp_path, parent_url, lambda dom: "Child runs" in dom)
    assert "recorded sweep" in parent
    assert "Child runs" in parent
    for name in CURVES:
        assert name in parent
    assert "sweep/grokked" in parent and "grok.summary" in parent
    assert "4 trials: 2 grokked, 2 stopped (3 kicks)" in parent

    trial_url = f"{server.uri}/#/experiments/1/runs/{runs['delayed_grokker_p47_small']}"
    plot_url = f"{trial_url}/artifacts/curves.png"
    plot = _dom(tmp_path, plot_url, lambda dom: '<img alt="curves.png"' in dom)
    assert '<img alt="curves.png" src="blob:' in plot
    assert "timeline.html" in plot and "grok.outcome" not in plot  # the artifacts tab

    for name, url in (("mlflow-ui-trial.png", plot_url), ("mlflow-ui-sweep.png", parent_url)):
        shot = tmp_path / name
        _chromium(tmp_path, url, f"--screenshot={shot}", 40_000)
        assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 50_000


def test_the_experiment_link_opens_the_runs_table(ui, tmp_path: Path) -> None:
    server, _ = ui
    url = ui_url(server.uri, "1")
    runs_page = _dom(tmp_path, url, lambda dom: "recorded sweep" in dom)
    assert "Run Name" in runs_page and "recorded sweep" in runs_page  # the runs table
    assert "No data available for the selected time range" not in runs_page  # no GenAI overview
    assert f">{Path(sys.argv[0]).name}<" in runs_page  # Source: the mlflow.source.name tag
