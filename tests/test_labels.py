"""Trial labels for people (``grokschedule.core.labels``): short names, rounded values, and only
the parameters that tell a sweep's trials apart."""

from __future__ import annotations

import numpy as np
import pytest

from grokschedule.core.labels import describe, format_value, short_labels, short_name


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.8999999999999999, "0.9"),
        (0.1 + 0.2, "0.3"),
        (1.0, "1"),
        (0.0, "0"),
        (-0.25, "-0.25"),
        (1e-3, "0.001"),
        (0.000123456, "0.000123"),
        (3e-5, "3e-5"),
        (1234.5, "1230"),
        (999.7, "1000"),  # rounding carries into the next power of ten
        (2.5e7, "2.5e7"),
        (float("nan"), "nan"),
        (np.float32(0.1), "0.1"),
        (47, "47"),
        (123456789, "123456789"),  # integers stay exact: seeds, sizes
        (np.int64(7), "7"),
        (True, "True"),
        (None, "None"),
        ("adamw", "adamw"),
        ("0.30000000000000004", "0.3"),  # MLflow params are strings
        ("47", "47"),
        ("1e-05", "1e-5"),
        ("inf", "inf"),
        ([0.1 + 0.2, 2], "[0.3, 2]"),
    ],
)
def test_format_value_rounds_for_people(value: object, text: str) -> None:
    assert format_value(value) == text


def test_short_names_from_the_table_or_by_abbreviation() -> None:
    assert [short_name(k) for k in ("weight_decay", "train_fraction", "seed", "p")] == [
        "wd",
        "frac",
        "seed",
        "p",
    ]
    assert short_name("model/learning_rate") == "lr"  # a nested key: its last part
    assert short_name("label_smoothing") == "ls"  # unknown and long: initials
    assert short_name("temperature") == "temper"  # one long word: its start
    assert short_name("curve") == "curve"  # short enough as it is


def test_labels_show_only_what_varies_with_short_names_and_rounded_values() -> None:
    common = {"p": 47, "embed_dim": 128, "lr": 1e-3, "_grokschedule_control": object()}
    configs = {
        "t0": {**common, "weight_decay": 0.30000000000000004, "train_fraction": 0.5, "seed": 1},
        "t1": {**common, "weight_decay": 1.0, "train_fraction": 0.5, "seed": 2},
        "t2": {**common, "weight_decay": 0.3, "train_fraction": 0.7, "seed": 1},
    }
    assert short_labels(configs) == {
        "t0": "wd=0.3 frac=0.5 seed=1",
        "t1": "wd=1 frac=0.5 seed=2",
        "t2": "wd=0.3 frac=0.7 seed=1",
    }


def test_labels_stay_unique_and_never_empty() -> None:
    # Float noise alone does not make a parameter vary; two trials nothing tells apart get their
    # ids; a key some trials lack is left out of those trials' labels.
    labels = short_labels(
        {
            "a": {"wd": 0.1 + 0.2, "seed": 1},
            "b": {"wd": 0.3, "seed": 1},
            "c": {"wd": 0.3, "seed": 2, "extra": 5},
        }
    )
    assert labels == {"a": "seed=1 (a)", "b": "seed=1 (b)", "c": "seed=2 extra=5"}
    assert short_labels({"only": {"wd": 1.0}}) == {"only": "only"}
    assert short_labels({}) == {}


def test_nested_configs_and_names_that_would_collide() -> None:
    labels = short_labels(
        {
            "a": {"model": {"lr": 0.1}, "optimizer": {"lr": 0.01}},
            "b": {"model": {"lr": 0.2}, "optimizer": {"lr": 0.02}},
        }
    )
    assert labels == {"a": "model/lr=0.1 optimizer/lr=0.01", "b": "model/lr=0.2 optimizer/lr=0.02"}
    assert describe({"weight_decay": 1.0, "train_fraction": 0.6000000000000001}) == "wd=1 frac=0.6"
