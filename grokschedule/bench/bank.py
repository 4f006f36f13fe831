"""Curve bank: many small grokking models trained at once, saved as one file of learning curves.

The scheduler's signals and thresholds are tuned and scored offline against real grokking curves,
and it takes hundreds of them to see both the runs that grok (early, late, or after a slingshot)
and the ones that only memorize, across what users run: moduli, widths, ops, train fractions,
weight decay, learning rates, init scales, AdamW and SGD, MLPs and transformers. Trained one by
one these cost hours; here the models of a chunk share their data, their parameters are stacked
on a leading model dimension and one vmapped forward/backward steps them all
(``bench.bank_models``), and chunks are saved as they finish so a large bank is built over
several runs (``bench.bank_chunks``).

Each bank row is the run ``ModularTrainer(TrainConfig(**row))`` would make: same split, the same
init bit for bit, full-batch AdamW (betas 0.9, 0.98) or SGD with momentum, and the same metrics
at the same steps (checked in tests/test_bank.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import InitVar, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from grokschedule.bench.bank_chunks import Chunk, ChunkStore, record_steps, train_chunks
from grokschedule.bench.bank_models import BANK_ARCHITECTURES, METRICS
from grokschedule.training.modular.task import ModularTask, build_model
from grokschedule.training.modular.trainer import OPTIMIZERS

__all__ = [
    "CONTRACT_NAMES",
    "GRID_COLUMNS",
    "METRICS",
    "BankGrid",
    "CurveBank",
    "bank_main",
    "generate_bank",
    "record_steps",
]

# The names ModularTrainer.evaluate reports them under; CurveBank.curve uses these.
CONTRACT_NAMES = {name: name for name in METRICS} | {
    name: f"grok/{name}" for name in ("val_confidence", "val_correct_prob", "zero_loss_share")
}
GRID_COLUMNS = (
    "op",
    "p",
    "train_fraction",
    "weight_decay",
    "lr",
    "init_scale",
    "seed",
    "embed_dim",
    "hidden_dim",
    "arch",
    "optimizer",
    "momentum",
)
# What banks written before a column existed imply for it. Momentum is SGD's: NaN on AdamW rows.
IMPLIED_COLUMNS: dict[str, Any] = {"arch": "mlp", "optimizer": "adamw", "momentum": math.nan}
# Rows sharing these share their data and shapes, so they can be trained as one batch.
BATCH_KEY = ("arch", "optimizer", "op", "p", "train_fraction", "seed", "embed_dim", "hidden_dim")
# Metric columns of the GPU bank layout (shared/banks/README.md): ours but the zero-loss share.
GPU_LAYOUT_METRICS = METRICS[: METRICS.index("zero_loss_share")]
AXES = (
    "archs",
    "optimizers",
    "ops",
    "ps",
    "train_fractions",
    "seeds",
    "embed_dims",
    "hidden_dims",
    "weight_decays",
    "lrs",
    "init_scales",
    "momentums",
)
MEMORIZED_AT = 0.99  # train_acc at which a run counts as having memorized its training set


def _is(kind: type | tuple[type, ...], test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, kind) and not isinstance(value, bool) and test(value)


_NUMBER = (int, float)
# Axis -> (what its values must be, the test); NaN fails every numeric test.
_AXIS_RULES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "archs": (f"one of {BANK_ARCHITECTURES}", lambda v: v in BANK_ARCHITECTURES),
    "optimizers": (f"one of {OPTIMIZERS}", lambda v: v in OPTIMIZERS),
    "ps": ("ints", _is(int, lambda v: True)),
    "seeds": ("ints >= 0", _is(int, lambda v: v >= 0)),
    "embed_dims": ("ints > 0", _is(int, lambda v: v > 0)),
    "hidden_dims": ("ints > 0", _is(int, lambda v: v > 0)),
    "weight_decays": ("numbers >= 0", _is(_NUMBER, lambda v: v >= 0)),
    "lrs": ("numbers > 0", _is(_NUMBER, lambda v: v > 0)),
    "init_scales": ("numbers > 0", _is(_NUMBER, lambda v: v > 0)),
    "momentums": ("numbers in [0, 1)", _is(_NUMBER, lambda v: 0 <= v < 1)),
}


@dataclass(frozen=True)
class BankGrid:
    """The cross product of these values is the bank; checked up front so a typo costs no compute.

    ``seed`` picks both the train/val split and the init, as in ``TrainConfig``. ``momentums`` is
    SGD's: AdamW rows take no momentum (NaN in the bank). ``embed_dim``/``hidden_dim`` are
    one-value shorthands for ``embed_dims``/``hidden_dims``. A bank made of several grids (SGD
    wants other learning rates than AdamW) passes a sequence of them to ``generate_bank``.
    """

    ops: tuple[str, ...] = ("add",)
    ps: tuple[int, ...] = (47,)
    train_fractions: tuple[float, ...] = (0.5,)
    weight_decays: tuple[float, ...] = (0.0, 0.1, 0.3, 1.0)
    lrs: tuple[float, ...] = (1e-3, 3e-3)
    seeds: tuple[int, ...] = (0, 1)
    init_scales: tuple[float, ...] = (1.0,)
    archs: tuple[str, ...] = ("mlp",)
    optimizers: tuple[str, ...] = ("adamw",)
    embed_dims: tuple[int, ...] = (64,)
    hidden_dims: tuple[int, ...] = (256,)
    momentums: tuple[float, ...] = (0.9,)
    embed_dim: InitVar[int | None] = None
    hidden_dim: InitVar[int | None] = None

    def __post_init__(self, embed_dim: int | None, hidden_dim: int | None) -> None:
        for name, value in (("embed_dim", embed_dim), ("hidden_dim", hidden_dim)):
            if value is not None:
                if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                    raise ValueError(f"BankGrid.{name} must be an int > 0, got {value!r}")
                object.__setattr__(self, f"{name}s", (value,))
        for name in AXES:
            values = getattr(self, name)
            if not isinstance(values, tuple) or not values:
                raise ValueError(f"BankGrid.{name} must be a non-empty tuple, got {values!r}")
            if len(set(values)) != len(values):
                raise ValueError(f"BankGrid.{name} has duplicates: {values!r}")
        for name, (rule, ok) in _AXIS_RULES.items():
            for value in getattr(self, name):
                if not ok(value):
                    raise ValueError(f"BankGrid.{name} values must be {rule}, got {value!r}")
        # The task and the model classes own their rules; only the field name is added here.
        for name, key in (("ops", "op"), ("ps", "p"), ("train_fractions", "train_fraction")):
            for value in getattr(self, name):
                try:
                    ModularTask(**{key: value})
                except (ValueError, TypeError) as error:
                    raise ValueError(f"BankGrid.{name}: {error}") from None
        with torch.device("meta"):  # shapes only, no memory
            for arch, embed, hidden in itertools.product(
                self.archs, self.embed_dims, self.hidden_dims
            ):
                try:
                    build_model(arch, self.ps[0], embed, hidden)
                except AssertionError as error:  # e.g. attention heads that do not divide
                    raise ValueError(f"BankGrid.embed_dims: {arch}: {error}") from None

    def rows(self) -> list[dict[str, Any]]:
        """One dict per model with the GRID_COLUMNS keys (``TrainConfig(**row)`` is its run),
        ordered so rows sharing BATCH_KEY are contiguous (bank row i is ``rows()[i]``)."""
        shared = itertools.product(
            self.archs,
            self.optimizers,
            self.ops,
            self.ps,
            self.train_fractions,
            self.seeds,
            self.embed_dims,
            self.hidden_dims,
        )
        rows = []
        for arch, optimizer, op, p, fraction, seed, embed, hidden in shared:
            momentums = self.momentums if optimizer == "sgd" else (math.nan,)
            for wd, lr, scale, momentum in itertools.product(
                self.weight_decays, self.lrs, self.init_scales, momentums
            ):
                rows.append(
                    dict(
                        op=op,
                        p=p,
                        train_fraction=float(fraction),
                        weight_decay=float(wd),
                        lr=float(lr),
                        init_scale=float(scale),
                        seed=seed,
                        embed_dim=embed,
                        hidden_dim=hidden,
                        arch=arch,
                        optimizer=optimizer,
                        momentum=float(momentum),
                    )
                )
        return rows

    def batches(self, max_models: int) -> list[tuple[int, int]]:
        """``(start, stop)`` row ranges: each run of rows sharing BATCH_KEY split into
        near-equal batches of at most ``max_models`` (even sizes keep the last batch from running
        a sliver of a GPU)."""
        ranges = []
        rows, start = self.rows(), 0
        for _, group in itertools.groupby(rows, key=lambda row: [row[k] for k in BATCH_KEY]):
            size = len(list(group))
            cuts = np.linspace(0, size, math.ceil(size / max_models) + 1).round().astype(int)
            ranges += [(start + int(a), start + int(b)) for a, b in itertools.pairwise(cuts)]
            start += size
        return ranges


def plan_chunks(grids: Sequence[BankGrid], max_models: int) -> list[Chunk]:
    """The bank's rows (the grids' rows, in order) cut into chunks of at most ``max_models``."""
    chunks: list[Chunk] = []
    offset = 0
    for grid in grids:
        rows = grid.rows()
        for start, stop in grid.batches(max_models):
            chunks.append(Chunk(len(chunks), offset + start, tuple(rows[start:stop])))
        offset += len(rows)
    return chunks


def _check_run(steps: int, record_every: int, max_models_per_batch: int, jobs: int) -> None:
    for name, value in (
        ("steps", steps),
        ("record_every", record_every),
        ("max_models_per_batch", max_models_per_batch),
        ("jobs", jobs),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be an int > 0, got {value!r}")


def generate_bank(
    grid: BankGrid | Sequence[BankGrid],
    steps: int,
    record_every: int,
    out_path: str | Path,
    device: str = "cpu",
    max_models_per_batch: int = 256,
    progress: Callable[[Chunk], None] | None = None,
    *,
    chunk_dir: str | Path | None = None,
    max_new_chunks: int | None = None,
    jobs: int = 1,
    bar: bool = False,
) -> Path | None:
    """Train every model of ``grid`` (or of each grid in turn) for ``steps`` full-batch steps and
    write the curves to ``out_path`` (``CurveBank.save``: same grid, same bytes).

    With ``chunk_dir``, each finished chunk is saved there at once and a rerun trains only the
    missing ones; ``max_new_chunks`` stops after that many, returning None while chunks remain.
    ``jobs`` worker processes train chunks side by side; ``bar`` shows a progress bar with an ETA
    on stderr, and ``progress`` is handed each chunk as it finishes (``print`` shows what it was).
    """
    grids = [grid] if isinstance(grid, BankGrid) else list(grid)
    if not grids or not all(isinstance(g, BankGrid) for g in grids):
        raise ValueError(f"grid must be a BankGrid or a non-empty sequence of them, got {grid!r}")
    _check_run(steps, record_every, max_models_per_batch, jobs)
    if max_new_chunks is not None and (not isinstance(max_new_chunks, int) or max_new_chunks < 0):
        raise ValueError(f"max_new_chunks must be an int >= 0 or None, got {max_new_chunks!r}")
    if max_new_chunks is not None and chunk_dir is None:
        raise ValueError("max_new_chunks needs a chunk_dir to keep the chunks it trains")
    chunks = plan_chunks(grids, max_models_per_batch)
    at = record_steps(steps, record_every)
    store = None
    if chunk_dir is not None:
        manifest = {
            "grids": [dataclasses.asdict(g) for g in grids],
            "steps": steps,
            "record_every": record_every,
            "max_models_per_batch": max_models_per_batch,
        }
        store = ChunkStore(chunk_dir, manifest)
    curves = {} if store is None else _saved_curves(store, chunks, len(at))
    todo = [chunk for chunk in chunks if chunk.index not in curves][:max_new_chunks]
    cost = {chunk.index: chunk.step_cost() for chunk in chunks}
    with tqdm(
        total=sum(cost.values()) * steps,
        initial=sum(cost[index] for index in curves) * steps,
        disable=not bar,
        file=sys.stderr,
        bar_format="{l_bar}{bar}| {elapsed}<{remaining}{postfix}",
        smoothing=0.05,  # chunks differ in speed: an ETA from the long-run rate is steadier
        dynamic_ncols=True,
    ) as meter:
        meter.set_postfix_str(f"{len(curves)}/{len(chunks)} chunks")

        def advance(chunk: Chunk, n: int) -> None:
            meter.update(cost[chunk.index] * n)

        for chunk, chunk_curves in train_chunks(todo, steps, record_every, device, jobs, advance):
            curves[chunk.index] = chunk_curves
            if store is not None:
                store.save(chunk, chunk_curves)
            meter.set_postfix_str(f"{len(curves)}/{len(chunks)} chunks")
            if progress is not None:
                progress(chunk)
    if len(curves) < len(chunks):
        return None
    rows = [row for g in grids for row in g.rows()]
    stacked = np.concatenate([curves[chunk.index] for chunk in chunks])
    bank = CurveBank(
        steps=at,
        metrics={name: stacked[..., k] for k, name in enumerate(METRICS)},
        grid={column: np.array([row[column] for row in rows]) for column in GRID_COLUMNS},
    )
    return bank.save(out_path)


def _saved_curves(
    store: ChunkStore, chunks: Sequence[Chunk], records: int
) -> dict[int, np.ndarray]:
    """The curves of the chunks a previous run finished, by chunk index."""
    saved = {}
    for chunk in chunks:
        curves = store.load(chunk, (len(chunk.rows), records, len(METRICS)))
        if curves is not None:
            saved[chunk.index] = curves
    return saved


@dataclass
class CurveBank:
    """A loaded bank: ``metrics[name]`` is (n_models, n_records) float32 sampled at ``steps``, and
    ``grid[column]`` holds each model's hyperparameters (row i of both is the same model).

    ``first_record[i]``, if set, is the first record row ``i`` reports: a trial that is first
    heard of late (``resampled(first_after_memorization=True)``). Earlier records are kept but
    are not part of its curve.
    """

    steps: np.ndarray
    metrics: dict[str, np.ndarray]
    grid: dict[str, np.ndarray]
    first_record: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.grid["op"])

    def _first(self, i: int) -> int:
        return 0 if self.first_record is None else int(self.first_record[i])

    def curve(self, i: int) -> dict[str, np.ndarray]:
        """Model ``i``'s reported curve keyed as a live trial reports it (``step``, ``val_acc``,
        ``grok/zero_loss_share``, ...), so a scheduler can be replayed on it. Metrics the bank
        lacks (all NaN) are left out, as a trainable that does not report them would."""
        first = self._first(i)
        return {"step": self.steps[first:]} | {
            CONTRACT_NAMES[name]: values[i, first:]
            for name, values in self.metrics.items()
            if not np.isnan(values[i]).all()  # a metric the bank does not have is not reported
        }

    def grok_step(self, i: int, threshold: float = 0.95) -> int | None:
        """First reported step at which model ``i`` reaches ``val_acc >= threshold``, else None."""
        first = self._first(i)
        reached = np.flatnonzero(self.metrics["val_acc"][i, first:] >= threshold)
        return int(self.steps[first + reached[0]]) if len(reached) else None

    def resampled(
        self,
        every: int | None = None,
        first_after_memorization: bool = False,
        memorized_at: float = MEMORIZED_AT,
    ) -> CurveBank:
        """The bank as trials reporting more sparsely and/or later would have reported it.

        ``every``: keep the records at multiples of ``every`` steps and the last one, as
        ``ModularTrainer`` with ``eval_every=every`` reports; each multiple must be a recorded
        step. ``first_after_memorization``: each row's first report is its first kept record
        at or after the step its ``train_acc`` first reached ``memorized_at`` (among its
        reported records); rows that never get there are left out.
        """
        keep = self._kept_records(every)
        first = np.zeros(len(self), np.int64) if self.first_record is None else self.first_record
        rows = np.arange(len(self))
        if first_after_memorization:
            if not 0 < memorized_at <= 1:
                raise ValueError(f"memorized_at must be in (0, 1], got {memorized_at!r}")
            reported = np.arange(len(self.steps)) >= first[:, None]
            memorized = (self.metrics["train_acc"] >= memorized_at) & reported
            candidates = (memorized.cumsum(1) > 0) & keep  # kept records from memorization on
            rows = np.flatnonzero(candidates.any(1))
            first = candidates[rows].argmax(1)
        # A row's first report among the kept records: the first kept one at or after `first`.
        first_kept = np.cumsum(keep)[first] - keep[first]
        late = first_after_memorization or self.first_record is not None
        return CurveBank(
            steps=self.steps[keep],
            metrics={name: values[rows][:, keep] for name, values in self.metrics.items()},
            grid={column: values[rows] for column, values in self.grid.items()},
            first_record=first_kept if late else None,
        )

    def _kept_records(self, every: int | None) -> np.ndarray:
        """Which records a trial reporting every ``every`` steps (and at the end) reports."""
        if every is None:
            return np.ones(len(self.steps), dtype=bool)
        if not isinstance(every, int) or isinstance(every, bool) or every <= 0:
            raise ValueError(f"every must be an int > 0, got {every!r}")
        wanted = np.arange(every, int(self.steps[-1]) + 1, every)
        missing = np.setdiff1d(wanted, self.steps)
        if len(missing):
            raise ValueError(
                f"every={every} asks for steps the bank did not record (first: "
                f"{int(missing[0])}); use a multiple of its record interval"
            )
        keep = np.isin(self.steps, wanted)
        keep[-1] = True
        return keep

    def save(self, path: str | Path) -> Path:
        """Write the bank as one ``np.savez_compressed`` file, atomically. The bytes depend only
        on the arrays (the zip entries carry a fixed date), so one bank always gives one file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"step": self.steps}
        arrays |= {f"metric/{name}": values for name, values in self.metrics.items()}
        arrays |= {f"grid/{column}": values for column, values in self.grid.items()}
        if self.first_record is not None:
            arrays["report/first_record"] = self.first_record
        partial = path.with_name(path.name + ".partial")
        with open(partial, "wb") as file:
            np.savez_compressed(file, allow_pickle=False, **arrays)
        partial.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> CurveBank:
        """A bank written by ``generate_bank`` or ``save`` (grid columns an older bank lacks get
        IMPLIED_COLUMNS, metrics it lacks are NaN: not reported), or one in the GPU-bank layout
        of ``shared/banks/`` (``steps``, ``metrics`` [models, records, 7], ``op``/``frac``/...)."""
        with np.load(path, allow_pickle=False) as data:
            if "metrics" in data.files:
                return cls._from_gpu_layout(data)
            n = len(data["grid/op"])
            grid = {
                column: data[f"grid/{column}"]
                if f"grid/{column}" in data.files
                else np.full(n, IMPLIED_COLUMNS[column])
                for column in GRID_COLUMNS
            }
            return cls(
                steps=data["step"],
                metrics={name: _metric(data, name) for name in METRICS},
                grid=grid,
                first_record=data["report/first_record"]
                if "report/first_record" in data.files
                else None,
            )

    @classmethod
    def _from_gpu_layout(cls, data: Any) -> CurveBank:
        """The shared GPU bank: its seven metric columns (no zero-loss share: NaN, read as not
        reported) and its grid, with the fixed sizes its README states (p 59, embed 128,
        hidden 256, init scale 1, AdamW MLPs)."""
        values = data["metrics"].astype(np.float32)
        columns = GPU_LAYOUT_METRICS
        metrics = {name: values[..., columns.index(name)] for name in columns}
        metrics["zero_loss_share"] = np.full(values.shape[:2], np.nan, dtype=np.float32)
        n = values.shape[0]
        op_names = {"sq": "x2y2", "cube": "x3xy"}
        grid = {
            "op": np.array([op_names.get(str(op), str(op)) for op in data["op"]]),
            "p": np.full(n, int(data["p"]) if "p" in data.files else 59),
            "train_fraction": data["frac"].astype(np.float64),
            "weight_decay": data["wd"].astype(np.float64),
            "lr": data["lr"].astype(np.float64),
            "init_scale": np.ones(n),
            "seed": data["seed"].astype(np.int64),
            "embed_dim": np.full(n, 128),
            "hidden_dim": np.full(n, 256),
        } | {column: np.full(n, value) for column, value in IMPLIED_COLUMNS.items()}
        return cls(steps=data["steps"], metrics=metrics, grid=grid)


def _metric(data: Any, name: str) -> np.ndarray:
    """A stored metric, or NaN (not reported) where the bank does not have it."""
    key = f"metric/{name}"
    if key in data.files:
        return np.asarray(data[key])
    return np.full((len(data["grid/op"]), len(data["step"])), np.nan, dtype=np.float32)


@dataclass(frozen=True)
class BankPreset:
    """A named bank: its grids and run settings, so one command rebuilds the same file."""

    grids: tuple[BankGrid, ...]
    steps: int
    record_every: int
    max_models_per_batch: int
    about: str


def _cpu_span() -> BankPreset:
    """What users run, at widths one CPU core trains in about half an hour (1,800 cpu-s).

    8,000 steps is ≥ 50× the memorization step of most rows (AdamW memorizes these in 40-230
    steps; ``bank_main`` prints the share), so late grokkers have room; SGD-momentum on the
    transformer memorizes only after ~1,000 steps, so its two rows see ~8× that. SGD's weight
    decay is L2 on the gradient: lr × wd per step is then of the size of AdamW's lr × wd. The
    costly axes (train fraction 0.8, p > 23, wide models, transformers) get fewer rows."""
    p23 = BankGrid(ps=(23,), seeds=(0,), embed_dims=(32,), hidden_dims=(128,))
    adamw = dataclasses.replace(p23, weight_decays=(0.0, 0.3, 1.0, 3.0), lrs=(1e-3, 3e-3))
    transformer = dataclasses.replace(p23, archs=("transformer",), hidden_dims=(64,))
    grids = (
        # The core: every op, weight decay 0-3, two learning rates.
        dataclasses.replace(
            adamw, ops=("add", "sub", "mul", "div", "x2y2"), train_fractions=(0.2, 0.5)
        ),
        dataclasses.replace(adamw, ops=("add", "mul", "x2y2"), train_fractions=(0.8,), lrs=(1e-3,)),
        # Large inits: long memorization plateaus, late grokkers (Omnigrok).
        dataclasses.replace(
            adamw,
            ops=("add", "sub", "mul", "x2y2"),
            train_fractions=(0.35,),
            weight_decays=(0.3, 1.0, 3.0),
            lrs=(1e-3,),
            init_scales=(2.0, 3.0),
        ),
        dataclasses.replace(
            p23,
            optimizers=("sgd",),
            ops=("add", "mul", "x2y2"),
            train_fractions=(0.3, 0.6),
            weight_decays=(1e-2, 3e-2),
            lrs=(0.3, 1.0),
            momentums=(0.9,),
        ),
        # Larger moduli.
        dataclasses.replace(
            adamw,
            ops=("add", "x2y2"),
            ps=(31, 43, 59),
            train_fractions=(0.3,),
            weight_decays=(0.3, 1.0),
            lrs=(3e-3,),
        ),
        # Other widths.
        dataclasses.replace(
            adamw,
            weight_decays=(0.3, 1.0),
            lrs=(1e-3,),
            embed_dims=(16, 64),
            hidden_dims=(64, 256),
        ),
        dataclasses.replace(
            transformer,
            ops=("add", "x2y2"),
            train_fractions=(0.3, 0.5),
            weight_decays=(0.3, 3.0),
            lrs=(1e-3,),
        ),
        dataclasses.replace(
            transformer,
            optimizers=("sgd",),
            weight_decays=(1e-3, 1e-2),
            lrs=(0.01,),
            momentums=(0.9,),
        ),
    )
    return BankPreset(grids, 8_000, 25, 24, "CPU spanning bank, about 30 min on one core")


PRESETS: dict[str, BankPreset] = {"cpu-span": _cpu_span()}


def _parser() -> argparse.ArgumentParser:
    defaults = BankGrid()
    parser = argparse.ArgumentParser(
        prog="grokschedule bench bank",
        description="Train a grid of grokking models at once and save their curves to one .npz.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output .npz path")
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="a named bank (grids, steps, record interval, batch size); excludes the grid flags",
    )
    kinds = {"archs": str, "optimizers": str, "ops": str, "ps": int, "seeds": int}
    kinds |= {"embed_dims": int, "hidden_dims": int}
    for name in AXES:
        flags = [f"--{name.replace('_', '-')}"]
        if name in ("embed_dims", "hidden_dims"):
            flags.append(flags[0][:-1])  # --embed-dim, as before widths were an axis
        parser.add_argument(*flags, dest=name, type=kinds.get(name, float), nargs="+")
    parser.set_defaults(grid_defaults={name: getattr(defaults, name) for name in AXES})
    parser.add_argument("--steps", type=int, help="training steps per model (default 5000)")
    parser.add_argument("--record-every", type=int, help="steps between records (default 50)")
    parser.add_argument("--max-models-per-batch", type=int, help="models per chunk (default 256)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--chunk-dir",
        type=Path,
        help="save each finished chunk here; a rerun with the same settings skips those",
    )
    parser.add_argument(
        "--max-new-chunks", type=int, help="train at most this many chunks in this run, then stop"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="worker processes training chunks side by side (each on one thread)",
    )
    parser.add_argument("--no-bar", action="store_true", help="no progress bar on stderr")
    return parser


def _preset_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> BankPreset:
    """The bank the command line asks for: a preset, or one grid from the axis flags."""
    given = [name for name in AXES if getattr(args, name) is not None]
    if args.preset is not None:
        if given:
            parser.error(f"--preset excludes the grid flags, got {given}")
        preset = PRESETS[args.preset]
    else:
        axes: dict[str, Any] = {
            name: tuple(getattr(args, name) or args.grid_defaults[name]) for name in AXES
        }
        preset = BankPreset((BankGrid(**axes),), 5_000, 50, 256, "from the command line")
    overrides = {
        name: getattr(args, name)
        for name in ("steps", "record_every", "max_models_per_batch")
        if getattr(args, name) is not None
    }
    return dataclasses.replace(preset, **overrides)


def bank_main(argv: list[str] | None = None) -> int:
    """``grokschedule bench bank``: generate a bank (resumably, with ``--chunk-dir``) and report
    throughput."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        preset = _preset_from_args(args, parser)
        _check_run(preset.steps, preset.record_every, preset.max_models_per_batch, args.jobs)
    except ValueError as error:
        parser.error(str(error))
    if args.max_new_chunks is not None and (args.max_new_chunks < 0 or args.chunk_dir is None):
        parser.error("--max-new-chunks takes a number >= 0 and needs --chunk-dir")
    rows = sum(len(grid.rows()) for grid in preset.grids)
    chunks = plan_chunks(preset.grids, preset.max_models_per_batch)
    print(f"bank: {rows} models in {len(chunks)} chunks, {preset.steps} steps ({preset.about})")
    began = time.perf_counter()
    trained: list[Chunk] = []

    def progress(chunk: Chunk) -> None:
        trained.append(chunk)
        tqdm.write(f"{chunk} of {len(chunks)}", file=sys.stdout)

    try:
        path = generate_bank(
            preset.grids,
            preset.steps,
            preset.record_every,
            args.out,
            args.device,
            preset.max_models_per_batch,
            progress,
            chunk_dir=args.chunk_dir,
            max_new_chunks=args.max_new_chunks,
            jobs=args.jobs,
            bar=not args.no_bar,
        )
    except KeyboardInterrupt:
        kept = f"kept in {args.chunk_dir}; rerun to continue" if args.chunk_dir else "not kept"
        print(f"interrupted after {len(trained)} new chunks ({kept})")
        return 130
    wall = time.perf_counter() - began
    model_steps = sum(len(chunk.rows) for chunk in trained) * preset.steps
    if model_steps:
        print(
            f"trained {len(trained)} chunks: model-steps {model_steps}, wall {wall:.1f}s, "
            f"{model_steps / wall:.1f} model-steps/s, "
            f"{wall / model_steps * 1e3:.3f} ms per model-step"
        )
    if path is None:
        print(f"stopped with chunks left in {args.chunk_dir}; rerun the same command to continue")
        return 0
    bank = CurveBank.load(path)
    finite = np.all([np.isfinite(values).all(1) for values in bank.metrics.values()], axis=0)
    print(f"wrote {path}: models {len(bank)}, rows with non-finite values {int((~finite).sum())}")
    print(horizon_summary(bank))
    return 0


def horizon_summary(bank: CurveBank) -> str:
    """How far past memorization the bank's horizon reaches: late grokkers need room."""
    memorized = bank.metrics["train_acc"] >= MEMORIZED_AT
    rows = np.flatnonzero(memorized.any(1))
    grokkers = sum(bank.grok_step(i) is not None for i in range(len(bank)))
    if not len(rows):
        return f"no row memorized (train_acc >= {MEMORIZED_AT}); grokkers {grokkers}"
    ratio = bank.steps[-1] / bank.steps[memorized[rows].argmax(1)]
    return (
        f"memorized {len(rows)}/{len(bank)} rows; horizon / memorization step: median "
        f"{np.median(ratio):.0f}x, min {ratio.min():.0f}x, >= 50x for {int((ratio >= 50).sum())}"
        f"; grokkers (val_acc >= 0.95) {grokkers}"
    )
