"""build_probe_sets: held-out groups never leak into training, the harder set is never trained
on, the counts are reported, and bad inputs fail with the argument named."""

from __future__ import annotations

import pytest

from grokschedule.training.probe_sets import build_probe_sets


def sums(operands: int, p: int = 7) -> list[str]:
    """``"a+b=c"`` with ``operands`` terms over all of ``range(p)``."""
    if operands == 2:
        return [f"{a}+{b}={(a + b) % p}" for a in range(p) for b in range(p)]
    return [f"{a}+{b}+{c}={(a + b + c) % p}" for a in range(p) for b in range(p) for c in (0, 1)]


def test_harder_examples_form_the_probe_set_and_the_rest_is_split() -> None:
    examples = sums(2) + sums(3)
    sets = build_probe_sets(examples, harder=lambda e: e.count("+") > 1, val_fraction=0.25)
    assert sets.report == {"train": 37, "val": 12, "probe": 98}
    assert sets.describe() == "train 37, val 12, probe 98"
    assert all(e.count("+") == 2 for e in sets.probe_sets["probe"])
    assert set(sets.train).isdisjoint(sets.probe_sets["val"])
    assert sorted(sets.train + sets.probe_sets["val"]) == sorted(sums(2))
    again = build_probe_sets(examples, harder=lambda e: e.count("+") > 1, val_fraction=0.25)
    assert again == sets  # a pure function of the inputs and the seed
    other = build_probe_sets(examples, val_fraction=0.25, seed=1, harder=lambda e: "+" in e[2:])
    assert other.probe_sets["val"] != sets.probe_sets["val"]


def test_holdout_key_holds_out_whole_groups() -> None:
    examples = sums(2)
    first = lambda e: e.split("+")[0]  # noqa: E731 - hold out every sum with a given first term
    sets = build_probe_sets(examples, holdout_key=first, val_fraction=0.3)
    held = {first(e) for e in sets.probe_sets["val"]}
    assert len(held) == 2 and held.isdisjoint(first(e) for e in sets.train)
    assert sets.report == {"train": 35, "val": 14}
    assert "probe" not in sets.probe_sets  # no harder predicate, no harder set


def test_extra_sets_are_added_under_their_names() -> None:
    sets = build_probe_sets(sums(2), extra={"handwritten": ["1+1=2"]})
    assert sets.probe_sets["handwritten"] == ["1+1=2"] and sets.report["handwritten"] == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"examples": []}, "examples is empty"),
        ({"examples": "1+1=2"}, "examples must be a list"),
        ({"harder": 3}, "harder must be a callable"),
        ({"holdout_key": "first"}, "holdout_key must be a callable"),
        ({"val_fraction": 1.0}, "val_fraction must be in"),
        ({"harder": lambda e: False}, r"\['probe'\] are empty .*harder matched no example"),
        ({"harder": lambda e: True}, r"harder matched every example"),
        ({"holdout_key": lambda e: 0}, "a single group"),
        ({"examples": ["1+1=2"]}, "too few to hold any out"),
        ({"extra": {"val": ["1+1=2"]}}, "extra set name 'val' is taken"),
        ({"extra": {"mine": []}}, r"\['mine'\] are empty"),
    ],
)
def test_bad_inputs_and_empty_sets_are_refused(kwargs: dict, message: str) -> None:
    arguments = {"examples": sums(2), **kwargs}
    with pytest.raises(ValueError, match=message):
        build_probe_sets(**arguments)


def test_the_lm_task_builds_its_sets_with_it() -> None:
    pytest.importorskip("transformers")
    from grokschedule.training.deepspeed.lm_task import LMTask, LMTaskConfig

    task = LMTask(LMTaskConfig(p=11, train_fraction=0.5))
    assert task.probe_set_sizes == {"train": 60, "val": 61, "probe": 256}
    assert {name: len(x) for name, (x, _) in task.eval_splits().items()} == {
        "val": 61,
        "probe": 256,
    }
