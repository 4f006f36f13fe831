"""Probe sets for a user's own task: split a list of examples into what the model trains on, a
held-out generalization set and a harder set beyond the training distribution.

Grokking is read off examples the model never trained on, so the split decides what a probe
signal means. ``holdout_key`` holds out whole *groups* (every example whose key is held out:
unseen operand pairs, unseen templates, unseen entity combinations), so the held-out set tests
composition rather than near-duplicates; ``harder`` says which examples are beyond the training
distribution (more operands, deeper nesting, longer inputs) — they are never trained on and
form their own set. The split is a pure function of the inputs and ``seed``.

    sets = build_probe_sets(examples, harder=lambda e: e.count("+") > 1, val_fraction=0.5)
    sets.train, sets.probe_sets["val"], sets.probe_sets["probe"], sets.report

``LMTask`` builds its probe sets with it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

T = TypeVar("T")
VAL, PROBE, TRAIN = "val", "probe", "train"


@dataclass(frozen=True)
class ProbeSets(Generic[T]):
    """The training examples and the named probe sets (``"val"``, and ``"probe"`` when a
    ``harder`` predicate was given); ``report`` counts the examples of each, train included."""

    train: list[T]
    probe_sets: dict[str, list[T]]
    report: dict[str, int]

    def describe(self) -> str:
        """One line for a log: ``train 264, val 265, probe 256``."""
        return ", ".join(f"{name} {count}" for name, count in self.report.items())


def build_probe_sets(
    examples: Sequence[T],
    harder: Callable[[T], bool] | None = None,
    holdout_key: Callable[[T], Hashable] | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    extra: dict[str, Sequence[T]] | None = None,
) -> ProbeSets[T]:
    """Split ``examples`` into train, ``"val"`` and (with ``harder``) ``"probe"``.

    - ``harder(example)`` True: the example goes to ``"probe"`` (never trained on);
    - the rest is split at random (``seed``): ``val_fraction`` of them held out into ``"val"``,
      or, with ``holdout_key``, ``val_fraction`` of the distinct keys with every example of
      those keys — so no held-out group leaks into training;
    - ``extra`` adds probe sets built elsewhere under their own names (e.g. a hand-written set).

    ``ValueError`` (naming the argument) for bad inputs and for any empty set, train included:
    a probe set with no example would report nothing, silently.
    """
    if isinstance(examples, str | bytes) or not isinstance(examples, Sequence):
        raise ValueError(f"examples must be a list (a sequence) of examples, got {examples!r:.80}")
    if not examples:
        raise ValueError("examples is empty: nothing to split into probe sets")
    for name, function in (("harder", harder), ("holdout_key", holdout_key)):
        if function is not None and not callable(function):
            raise ValueError(f"{name} must be a callable or None, got {function!r}")
    if not (isinstance(val_fraction, int | float) and 0.0 < val_fraction < 1.0):
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    extra = dict(extra or {})
    for name in extra:
        if name in (TRAIN, VAL) or (harder is not None and name == PROBE):
            raise ValueError(f"extra set name {name!r} is taken by a built set")

    pool, probe = [], []
    for example in examples:
        (probe if harder is not None and harder(example) else pool).append(example)
    train, val = _split(pool, holdout_key, val_fraction, seed)
    sets: dict[str, list[T]] = {VAL: val}
    if harder is not None:
        sets[PROBE] = probe
    sets.update({name: list(values) for name, values in extra.items()})
    report = {TRAIN: len(train), **{name: len(values) for name, values in sets.items()}}
    empty = [name for name, count in report.items() if count == 0]
    if empty:
        raise ValueError(
            f"probe sets {empty} are empty ({_counts(report)}); "
            f"{_why_empty(empty, holdout_key, len(examples))}"
        )
    return ProbeSets(train, sets, report)


def _split(
    pool: list[T], key: Callable[[T], Hashable] | None, fraction: float, seed: int
) -> tuple[list[T], list[T]]:
    """Train and held-out parts of ``pool``: ``fraction`` of its groups held out at random."""
    keys = [key(example) for example in pool] if key is not None else list(range(len(pool)))
    groups = list(dict.fromkeys(keys))  # distinct keys, in first-seen order
    order = torch.randperm(len(groups), generator=torch.Generator().manual_seed(seed)).tolist()
    n_train = max(1, round((1.0 - fraction) * len(groups))) if groups else 0
    held_out = {groups[i] for i in order[n_train:]}
    if key is None:  # each example its own group: keep the shuffled order
        return [pool[i] for i in order[:n_train]], [pool[i] for i in order[n_train:]]
    train = [example for example, k in zip(pool, keys, strict=True) if k not in held_out]
    val = [example for example, k in zip(pool, keys, strict=True) if k in held_out]
    return train, val


def _counts(report: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in report.items())


def _why_empty(empty: list[str], holdout_key: object, total: int) -> str:
    if PROBE in empty:
        return "harder matched no example; give examples beyond the training distribution"
    if TRAIN in empty:
        return "harder matched every example; nothing is left to train on"
    if holdout_key is not None:
        return "holdout_key gave a single group; hold out by a key with at least 2 values"
    return f"{total} examples are too few to hold any out; give more or raise val_fraction"
