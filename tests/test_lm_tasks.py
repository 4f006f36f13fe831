"""The LM text tasks: every answer is right, held-out pairs are unseen, bad settings are named."""

from __future__ import annotations

import itertools

import pytest

pytest.importorskip("transformers")

from grokschedule.training.deepspeed.lm_task import (
    IGNORE,
    CharTokenizer,
    LMTask,
    LMTaskConfig,
    addition_problems,
    composition_problems,
)


def test_every_composition_answer_is_the_composed_permutation() -> None:
    problems, probe = composition_problems(3, seed=0)
    assert len(problems) == 36 and len({q for q, _ in problems}) == 36  # all 3! × 3! pairs, once
    for prompt, answer in problems + probe:
        first, *rest = [list(map(int, perm)) for perm in prompt[:-1].split("*")]
        result = first
        for perm in rest:  # ((x*y)*z)[i] = (x*y)[z[i]]
            result = [result[i] for i in perm]
        assert answer == "".join(map(str, result)), prompt
    assert all(q.count("*") == 2 for q, _ in probe)  # the probe composes three


def test_composition_follows_x_of_y() -> None:
    problems, _ = composition_problems(4, seed=1)
    lookup = dict(problems)
    assert lookup["1023*0123="] == "1023"  # x ∘ identity = x
    assert lookup["0123*1023="] == "1023"  # identity ∘ y = y
    assert lookup["2031*1320="] == "0132"  # x[y[i]]: x[1], x[3], x[2], x[0]


def test_addition_problems_are_sums_mod_p() -> None:
    problems, probe = addition_problems(7, seed=0)
    assert sorted(problems) == sorted(
        (f"{a}+{b}=", str((a + b) % 7)) for a, b in itertools.product(range(7), repeat=2)
    )
    for prompt, answer in probe:
        assert sum(map(int, prompt[:-1].split("+"))) % 7 == int(answer)


@pytest.mark.parametrize("op", ["add", "compose"])
def test_validation_holds_out_pairs_and_the_answer_is_the_only_target(op: str) -> None:
    task = LMTask(LMTaskConfig(op=op, p=11, perm_size=4, train_fraction=0.4))
    tokenizer = CharTokenizer()
    (train_x, train_y), (val_x, _) = task.train_split(), task.eval_splits()["val"]
    seen = {tuple(row.tolist()) for row in train_x}
    assert not seen & {tuple(row.tolist()) for row in val_x}
    total = 121 if op == "add" else 576
    assert len(train_x) == round(0.4 * total) and len(train_x) + len(val_x) == total
    text = tokenizer.decode(train_x[0].tolist())
    answer = text.split("=")[1]
    targets = train_y[0][train_y[0] != IGNORE].tolist()
    assert tokenizer.decode(targets) == answer and len(targets) == len(answer) + 1  # + eos
    probe_x, _ = task.eval_splits()["probe"]
    assert probe_x.shape[1] == task.length  # the longest (three-operand) prompt fits


@pytest.mark.parametrize(
    ("values", "named"),
    [({"op": "mul"}, "lm_op"), ({"op": "compose", "perm_size": 7}, "lm_perm_size")],
)
def test_bad_settings_are_named(values: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        LMTaskConfig(**values)  # type: ignore[arg-type]
