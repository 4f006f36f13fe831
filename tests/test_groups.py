"""Leave-one-group-out replays (grokschedule bench groups) on real GPU curves: the scheduler's
worst case on runs it was not tuned on, offline and through real Ray Tune."""

from __future__ import annotations

from pathlib import Path

import pytest

from grokschedule.bench.bank import CurveBank
from grokschedule.bench.groups import groups_of, run_groups, sparse_curve

SUBSET = Path(__file__).parent / "data" / "p59_subset.npz"


def _run(tmp_path: Path, **overrides) -> dict:
    args = {
        "bank_path": SUBSET,
        "columns": ["op"],
        "everies": [1, 5],
        "schedulers": ["grok", "fifo"],
        "threshold": 0.95,
        "fold_predictors": None,
        "predictor": True,
        "settings": {},
        "offline": True,
        "concurrent": 4,
        "storage": tmp_path,
    }
    return run_groups(**(args | overrides))


def test_groups_cover_every_row_once_per_column() -> None:
    bank = CurveBank.load(SUBSET)
    groups = groups_of(bank, ["op"])
    assert sorted(r for g in groups for r in g.rows) == list(range(len(bank)))
    with pytest.raises(ValueError, match="no column 'modulus'"):
        groups_of(bank, ["modulus"])


def test_sparse_curve_starts_after_memorization() -> None:
    curve = sparse_curve(CurveBank.load(SUBSET), 0, 5)
    assert curve["step"][0] == 500 and curve["train_acc"][0] >= 0.99


def test_defaults_stop_no_grokker_before_max_t(tmp_path: Path) -> None:
    """The seven grokkers of the subset that 0.1 stopped early (slingshots read as divergence,
    a predictor outside its data) are all found, with dense and with sparse reports."""
    report = _run(tmp_path)
    for row in (r for r in report["rows"] if r["scheduler"] == "grok"):
        assert row["false_kills"] == [], (row["every"], row["group"], row["false_kill_reasons"])
    fifo = [r for r in report["rows"] if r["scheduler"] == "fifo"]
    assert all(r["recall"] == 1.0 for r in fifo if r["grokkers"])


@pytest.mark.slow
def test_tune_replay_decides_as_the_offline_replay(tmp_path: Path) -> None:
    """Through real Ray Tune, GrokScheduler stops every trial where GrokPolicy alone does."""
    common = {"everies": [5], "schedulers": ["grok"]}
    offline = _run(tmp_path, **common)
    tuned = _run(tmp_path, offline=False, **common)
    for a, b in zip(offline["rows"], tuned["rows"], strict=True):
        assert (a["group"], a["found"], a["false_kills"]) == (
            b["group"],
            b["found"],
            b["false_kills"],
        )
        assert a["compute_vs_fifo_stop"] == pytest.approx(b["compute_vs_fifo_stop"])
