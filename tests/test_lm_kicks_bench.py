"""``grokschedule bench lm-kicks``: the table's arithmetic, and a tiny run on a real engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grokschedule.bench.lm_kicks import ArmResult, table


def result(arm: str, grok: int | None, seed: int = 0, forgot: bool = False) -> ArmResult:
    config = {"lm_op": "compose", "lm_lora_rank": 4, "seed": seed}
    restored = True if forgot else None
    return ArmResult(config, arm, grok, budget=3000, forgot=forgot, rollback_restored=restored)


def test_the_table_compares_each_kicked_run_with_the_same_config_unkicked() -> None:
    rows = [
        result("none", 2000, 0),
        result("none", None, 1),  # never grokked: counts at the budget, 3,000
        result("lora_rank", 1000, 0),
        result("lora_rank", 1500, 1, forgot=True),
    ]
    text = table(rows)
    none, lora = (line for line in text.splitlines() if line.startswith(("| none", "| lora")))
    assert none == "| none | 2 | 1 | 2,500 | 1.00× | 1.00× | 0 | 0/0 |"
    # speed-ups 2000/1000 = 2 and 3000/1500 = 2; one forgetting incident, restored
    assert lora == "| lora_rank | 2 | 2 | 1,250 | 2.00× | 2.00× | 1 | 1/1 |"


def test_an_arm_run_without_the_unkicked_arm_has_no_speed_up_to_show() -> None:
    text = table([result("lora_rank", 2000, 0), result("lora_rank", None, 1)])
    assert text.splitlines()[-1] == "| lora_rank | 2 | 1 | 2,500 | — | — | 0 | 0/0 |"


@pytest.mark.slow
def test_a_tiny_run_kicks_every_arm_on_the_same_step(process_group: None, tmp_path: Path) -> None:
    """Under the suite's shared one-rank group (``single_process_group`` reuses a group that
    exists; DeepSpeed then needs the rank variables the fixture sets)."""
    pytest.importorskip("deepspeed")
    pytest.importorskip("peft")
    from grokschedule.bench.lm_kicks import lm_kicks_main

    out = tmp_path / "lm_kicks.json"
    assert lm_kicks_main(["--tiny", "--out", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert [r["arm"] for r in results] == ["none", "lora_rank", "sgd_switch"]
    assert [r["kick_step"] for r in results] == [None, 20, 20]
    for r in results:
        assert [step for step, _, _ in r["history"]] == [10, 20, 30, 40]
        assert all(0 <= train <= 1 and 0 <= val <= 1 for _, train, val in r["history"])
