"""``grokschedule bench soak`` in small: 20 replay trials through real Tune, each trial's outcome
equal to an offline replay of its curve, nothing left reserved, no result lost or repeated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_replay_bench import write_bank

from grokschedule.bench.soak import soak_main

pytestmark = pytest.mark.slow


def test_twenty_trials_match_their_offline_replay(tmp_path: Path, capsys) -> None:
    write_bank(tmp_path / "bank.npz")  # grokker (1700), memorizer, delayed grokker (2400)
    out = tmp_path / "soak.json"
    argv = ["--bank", str(tmp_path / "bank.npz"), "--trials", "20", "--rows", "3"]
    argv += ["--horizon", "2000", "--max-concurrent", "4"]
    argv += ["--storage", str(tmp_path / "runs"), "--out", str(out)]
    assert soak_main(argv) == 0
    assert capsys.readouterr().out.splitlines()[-3].startswith("| trials | results | errors |")
    report = json.loads(out.read_text())
    assert (report["trials_seen"], report["errors"], report["mismatches"]) == (20, 0, [])
    assert (report["horizon"], report["max_t"]) == (2000, 1300)
    assert report["grokked"] == 7  # rows 0, 3, 6, ... are the grokker: 7 of 20 trials
    assert report["cpu_left_reserved"] == 0
