"""``grokschedule bench kicks``: what each kick does to grokking, measured on many runs at once.

Eight runs say little about a kick; this trains hundreds at once with the curve bank's machinery
(``bench.bank_models``: the real modular models, stacked and stepped by one vmapped
forward/backward). Every config is trained as one plain AdamW run plus one copy per (kick, age):
the copies are the plain run bit for bit until their kick, which each gets once its config's
plain run has memorized its training set (train_acc ≥ 0.99) at step ``m``, at step ``age × m``
(``AGES`` 1×, 2×, 4×: a plateau just begun, or older; the ``cpu`` preset takes 1× and 4×). The
kicks are the product's kinds (``core.kicks``) with the sizes listed in ``TABLE_KICKS``, applied
per model by a batched optimizer that does what ``training.kick_applier`` does to one model,
plus the Omnigrok remedy (Liu et al. 2022, arXiv 2210.01117), a weight-norm rescale toward a
target norm, which no trainer carries out yet (``NORM_RESCALE``: table only). A ``batch_size``
kick is left out: the bank trains full-batch, where accumulating more micro-batches of the same
batch changes nothing but the lr rule.

Per run: steps to grok (first record with val_acc ≥ 0.95; never = the budget in medians),
forgetting (train_acc falls ``FORGET_DROP`` below its best and is not back within
``FORGET_WINDOW`` steps) and the rollback ``KickPolicy`` would have ordered (its own ``harm``
rule, fed the recorded train metrics; a kick counts as judged once the run groks). Per group
(arch, op, weight-decay band) and kick: runs, grokked, median steps to grok, the speed-up of that
median against plain AdamW's, runs that grok only with the kick, runs lost to it (plain AdamW
groks, the kicked run does not), forgetting and rollbacks; and per kick its worst group.

    flock /work/scratch/cpu.lock grokschedule bench kicks --preset cpu --jobs 2 --out kicks.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grokschedule.bench.bank_chunks import Chunk, one_thread, record_steps, train_chunks
from grokschedule.bench.bank_models import (
    BETAS,
    EPS,
    METRICS,
    Params,
    flush_denormals,
)
from grokschedule.core.contract import CONTROL_WEIGHT_DECAY
from grokschedule.core.kick_policy import KickConfig, KickPolicy
from grokschedule.core.kicks import (
    GRAD_NOISE,
    GROKFAST,
    LR_CYCLE,
    LR_MULTIPLY,
    ORTHO_GRAD,
    SGD_SWITCH,
    WEIGHT_DECAY,
    Kick,
)

GROK_AT = 0.95
MEMORIZED_AT = 0.99
FORGET_DROP = 0.2  # as bench.interventions
FORGET_WINDOW = 500  # steps a drop has to come back within
NORM_RESCALE = "norm_rescale"  # table only: no trainer carries it out yet
PLAIN = "adamw"  # the label of the plain run of each config
_COLUMN = {name: k for k, name in enumerate(METRICS)}


@dataclass(frozen=True)
class TableKick:
    """One kick of the table: a core ``Kick`` (``kick``), or the table-only norm rescale, which
    holds the weight norm at ``norm_factor`` × its norm at the kick for ``duration`` steps."""

    label: str
    kick: Kick | None = None
    norm_factor: float | None = None
    duration: int | None = None

    def __post_init__(self) -> None:
        if (self.kick is None) == (self.norm_factor is None):
            raise ValueError(f"TableKick {self.label!r}: give exactly one of kick, norm_factor")
        if self.kick is not None and self.kick.kind == "batch_size":
            raise ValueError("batch_size kicks change nothing in full-batch training")
        if self.norm_factor is not None and not self.norm_factor > 0:
            raise ValueError(f"norm_factor must be > 0, got {self.norm_factor!r}")

    @property
    def kind(self) -> str:
        return NORM_RESCALE if self.kick is None else self.kick.kind

    @property
    def window(self) -> int | None:
        """Steps the kick lasts; None: the rest of the run."""
        return self.duration if self.kick is None else self.kick.duration_steps


TABLE_KICKS: tuple[TableKick, ...] = (
    TableKick("lr×3 300", Kick(LR_MULTIPLY, {"factor": 3.0}, 300)),
    TableKick("lr cycle ×10 400", Kick(LR_CYCLE, {"peak": 10.0}, 400)),
    TableKick("wd×3 600", Kick(WEIGHT_DECAY, {"factor": 3.0}, 600)),
    TableKick("wd×10 1000", Kick(WEIGHT_DECAY, {"factor": 10.0}, 1000)),
    TableKick("⊥grad 250", Kick(ORTHO_GRAD, duration_steps=250)),
    TableKick("grokfast .98/2", Kick(GROKFAST, {"alpha": 0.98, "lamb": 2.0})),
    TableKick("grokfast .8/.1", Kick(GROKFAST, {"alpha": 0.8, "lamb": 0.1})),
    TableKick("sgd .01 300", Kick(SGD_SWITCH, {"lr": 0.01, "momentum": 0.9}, 300)),
    TableKick("noise 1e-3 500", Kick(GRAD_NOISE, {"std": 1e-3, "gamma": 0.55}, 500)),
    TableKick("norm ×0.7 500", norm_factor=0.7, duration=500),
)
AGES = (1.0, 2.0, 4.0)


# -- one chunk: a batch of configs sharing their data, each plain and kicked -----------------------
def _per_model(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view((-1,) + (1,) * (like.dim() - 1))


class KickedAdamW:
    """``BatchedAdamW`` with kicks: per model, a kick of ``TableKick`` from step ``start[j]``
    (``-1``: none yet). What each kind does is ``training.kick_applier``'s: lr and weight decay
    multiplied (``Kick.lr_factor``/``wd_factor``), Grokfast then noise then ⊥Grad on the gradient,
    AdamW set aside for SGD with momentum (its moments and step count untouched, SGD's L2 weight
    decay the run's), and the table-only norm rescale after the step."""

    def __init__(
        self,
        params: Params,
        lrs: Sequence[float],
        weight_decays: Sequence[float],
        kicks: Sequence[TableKick | None],
        seed: int = 0,
    ) -> None:
        n = len(kicks)
        self.base_lr = np.asarray(lrs, np.float64)
        self.base_wd = np.asarray(weight_decays, np.float64)
        self.kicks = list(kicks)
        self.start = np.full(n, -1, np.int64)
        self.adam_t = np.zeros(n, np.int64)
        self.exp_avg = {k: torch.zeros_like(v) for k, v in params.items()}
        self.exp_avg_sq = {k: torch.zeros_like(v) for k, v in params.items()}
        self.ema = {k: torch.zeros_like(v) for k, v in params.items()}
        self.buffer = {k: torch.zeros_like(v) for k, v in params.items()}
        self.target_norm = np.zeros(n)
        self.window = np.array(
            [math.inf if k is None or k.window is None else k.window for k in kicks]
        )
        self.generator = torch.Generator().manual_seed(seed)
        self._of_kind: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(n, bool))
        for j, kick in enumerate(kicks):
            if kick is not None:
                self._of_kind[kick.kind][j] = True

    def in_force(self, step: int) -> np.ndarray:
        """Which models are under their kick at (0-based) optimizer step ``step``."""
        return (self.start >= 0) & (self.start <= step) & (step < self.start + self.window)

    def step_(self, params: Params, grads: Params, step: int) -> None:
        force = self.in_force(step)
        lr_factor = np.ones(len(force))
        wd_factor = np.ones(len(force))
        for j in np.flatnonzero(force):
            core = self.kicks[j].kick  # type: ignore[union-attr]
            if core is not None:
                lr_factor[j] = core.lr_factor(step - int(self.start[j]))
                wd_factor[j] = core.wd_factor()
        self._transform(params, grads, force, step)
        sgd = force & self._of_kind[SGD_SWITCH]
        adam = ~sgd
        self.adam_t += adam
        device = next(iter(params.values())).device

        def vector(values: np.ndarray) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device)

        beta1, beta2 = BETAS
        t = np.maximum(self.adam_t, 1)
        lr = vector(self.base_lr * lr_factor)
        wd = vector(self.base_wd * wd_factor)
        bc1 = vector(1 - beta1**t)
        bc2_sqrt = vector((1 - beta2**t) ** 0.5)
        sgd_lr, momentum = np.zeros(len(force)), np.zeros(len(force))
        for j in np.flatnonzero(sgd):
            kick_params = self.kicks[j].kick.params  # type: ignore[union-attr]
            sgd_lr[j] = kick_params["lr"] * lr_factor[j]
            momentum[j] = kick_params["momentum"]
        fresh_sgd = torch.tensor(sgd & (self.start == step), device=device)
        sgd_on = torch.tensor(sgd, device=device)
        for name, param in params.items():
            grad, exp_avg, exp_avg_sq = grads[name], self.exp_avg[name], self.exp_avg_sq[name]
            if sgd.any():  # the switched models' moments stay as they were
                keep = _per_model(~sgd_on, param)
                old_avg, old_sq = exp_avg.clone(), exp_avg_sq.clone()
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / _per_model(bc2_sqrt, param)).add_(EPS)
            adam_new = param * (1 - _per_model(lr * wd, param))
            adam_new.sub_(exp_avg / denom * _per_model(lr / bc1, param))
            if not sgd.any():
                param.copy_(adam_new)
                continue
            exp_avg.copy_(torch.where(keep, exp_avg, old_avg))
            exp_avg_sq.copy_(torch.where(keep, exp_avg_sq, old_sq))
            # torch.optim.SGD: L2 decay on the gradient, heavy-ball momentum from a zero buffer.
            buffer = torch.where(_per_model(fresh_sgd, param), 0.0, self.buffer[name])
            buffer = buffer * _per_model(vector(momentum), param) + grad
            buffer.add_(param * _per_model(wd, param))
            self.buffer[name] = torch.where(keep, self.buffer[name], buffer)
            sgd_new = param - buffer * _per_model(vector(sgd_lr), param)
            param.copy_(torch.where(keep, adam_new, sgd_new))
        self._rescale(params, force, step)

    def _transform(self, params: Params, grads: Params, force: np.ndarray, step: int) -> None:
        """Grokfast, then gradient noise, then ⊥Grad (``kicks.GRAD_TRANSFORMS``), in place."""
        device = next(iter(params.values())).device
        grokfast = force & self._of_kind[GROKFAST]
        if grokfast.any():
            alpha, lamb = np.zeros(len(force)), np.zeros(len(force))
            for j in np.flatnonzero(grokfast):
                kick_params = self.kicks[j].kick.params  # type: ignore[union-attr]
                alpha[j], lamb[j] = kick_params["alpha"], kick_params["lamb"]
            on = torch.tensor(grokfast, device=device)
            fresh = torch.tensor(grokfast & (self.start == step), device=device)
            a = torch.tensor(alpha, dtype=torch.float32, device=device)
            b = torch.tensor(lamb, dtype=torch.float32, device=device)
            for name, grad in grads.items():
                ema = self.ema[name]
                filtered = ema * _per_model(a, ema) + grad * _per_model(1 - a, ema)
                filtered = torch.where(_per_model(fresh, ema), grad, filtered)
                self.ema[name] = torch.where(_per_model(on, ema), filtered, ema)
                grad.add_(self.ema[name] * _per_model(b * on, grad))
        noise = force & self._of_kind[GRAD_NOISE]
        if noise.any():
            std = np.zeros(len(force))
            for j in np.flatnonzero(noise):
                kick_params = self.kicks[j].kick.params  # type: ignore[union-attr]
                elapsed = step - int(self.start[j])
                std[j] = kick_params["std"] * (1 + elapsed) ** (-kick_params["gamma"] / 2)
            scale = torch.tensor(std, dtype=torch.float32, device=device)
            for grad in grads.values():
                draw = torch.randn(grad.shape, generator=self.generator).to(device)
                grad.add_(draw * _per_model(scale, grad))
        ortho = force & self._of_kind[ORTHO_GRAD]
        if ortho.any():
            on = torch.tensor(ortho, device=device)
            for name, grad in grads.items():
                w, g = params[name].flatten(1), grad.flatten(1)
                orth = g - ((w * g).sum(1) / ((w * w).sum(1) + 1e-30))[:, None] * w
                orth = orth * (g.norm(dim=1) / (orth.norm(dim=1) + 1e-30))[:, None]
                grad.copy_(torch.where(on[:, None], orth, g).view_as(grad))

    def _rescale(self, params: Params, force: np.ndarray, step: int) -> None:
        """The norm rescale: every model under it is scaled to its target norm after the step."""
        rescale = force & self._of_kind[NORM_RESCALE]
        if not rescale.any():
            return
        norms = torch.stack([p.pow(2).flatten(1).sum(1) for p in params.values()]).sum(0).sqrt()
        norms_np = norms.double().cpu().numpy()
        for j in np.flatnonzero(rescale & (self.start == step)):
            # The target is set from the norm before this first step's update: close enough.
            self.target_norm[j] = self.kicks[j].norm_factor * norms_np[j]  # type: ignore[union-attr,operator]
        scale = np.where(rescale, self.target_norm / np.maximum(norms_np, 1e-30), 1.0)
        factor = torch.tensor(scale, dtype=torch.float32, device=norms.device)
        for param in params.values():
            param.mul_(_per_model(factor, param))


def train_kicked_chunk(
    chunk: Chunk,
    steps: int,
    record_every: int,
    device: str = "cpu",
    advance: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Train a chunk of table rows (``table_rows``): the plain run of each config and its kicked
    copies. Curves as float32 (models, records, len(METRICS)); a chunk whose runs have all grokked
    and been watched ``FORGET_WINDOW`` steps more stops early, its last record carried forward."""
    rows = chunk.rows
    first = rows[0]
    x_train, y_train, x_val, y_val = chunk.data(device)
    batch = chunk.models(device)  # AdamW rows (TableGrid); KickedAdamW takes their parameters
    optimizer = KickedAdamW(
        batch.params,
        [row["lr"] for row in rows],
        [row["weight_decay"] for row in rows],
        [row["kick"] for row in rows],
        seed=int(first["seed"]),
    )
    config = np.array([row["config"] for row in rows])
    plain = {int(row["config"]): j for j, row in enumerate(rows) if row["kick"] is None}
    ages = np.array([row["age"] for row in rows])
    at = record_steps(steps, record_every)
    recorded = np.empty((len(rows), len(at), len(METRICS)), np.float32)
    grokked = np.full(len(rows), -1, np.int64)
    done = 0
    with flush_denormals(), one_thread():
        for index, until in enumerate(at):
            for step in range(done, int(until)):
                grads = batch.loss_and_grads(x_train, y_train)[1]
                with torch.no_grad():
                    optimizer.step_(batch.params, grads, step)
            if advance is not None:
                advance(int(until) - done)
            done = int(until)
            values = batch.metrics(x_train, y_train, x_val, y_val).cpu().numpy()
            recorded[:, index] = values
            for c, j in plain.items():
                siblings = (config == c) & (optimizer.start < 0) & (ages > 0)
                if siblings.any() and values[j, _COLUMN["train_acc"]] >= MEMORIZED_AT:
                    optimizer.start[siblings] = np.round(ages[siblings] * done).astype(np.int64)
            newly = (grokked < 0) & (values[:, _COLUMN["val_acc"]] >= GROK_AT)
            grokked[newly] = done
            if (grokked >= 0).all() and done >= grokked.max() + FORGET_WINDOW:
                recorded[:, index + 1 :] = values[:, None]
                if advance is not None:
                    advance(steps - done)
                break
    return recorded


# -- the grid --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TableGrid:
    """Configs (the cross product of the axes, AdamW) and the kicks and ages each one gets."""

    ops: tuple[str, ...] = ("add",)
    ps: tuple[int, ...] = (23,)
    train_fractions: tuple[float, ...] = (0.4,)
    weight_decays: tuple[float, ...] = (0.1, 1.0)
    lrs: tuple[float, ...] = (3e-3,)
    seeds: tuple[int, ...] = (0,)
    archs: tuple[str, ...] = ("mlp",)
    embed_dims: tuple[int, ...] = (32,)
    hidden_dims: tuple[int, ...] = (128,)
    init_scales: tuple[float, ...] = (1.0,)

    def configs(self) -> list[dict[str, Any]]:
        configs = []
        for arch, op, p, fraction, seed, embed, hidden in itertools.product(
            self.archs,
            self.ops,
            self.ps,
            self.train_fractions,
            self.seeds,
            self.embed_dims,
            self.hidden_dims,
        ):
            for wd, lr, scale in itertools.product(self.weight_decays, self.lrs, self.init_scales):
                configs.append(
                    dict(
                        arch=arch,
                        optimizer="adamw",
                        op=op,
                        p=p,
                        train_fraction=float(fraction),
                        seed=seed,
                        embed_dim=embed,
                        hidden_dim=hidden,
                        weight_decay=float(wd),
                        lr=float(lr),
                        init_scale=float(scale),
                    )
                )
        return configs


SHARED = ("arch", "op", "p", "train_fraction", "seed", "embed_dim", "hidden_dim")


@dataclass(frozen=True)
class TablePreset:
    grids: tuple[TableGrid, ...]
    kicks: tuple[TableKick, ...]
    ages: tuple[float, ...]
    steps: int
    record_every: int
    max_models: int
    about: str


def table_rows(
    preset: TablePreset,
) -> list[dict[str, Any]]:
    """Every model of the table: per config, its plain run (``kick`` None, ``age`` 0) and one
    copy per (kick, age); ``config`` numbers the configs. Rows sharing data are contiguous."""
    configs = [config for grid in preset.grids for config in grid.configs()]
    configs.sort(key=lambda c: tuple(str(c[k]) for k in SHARED))
    rows = []
    for index, config in enumerate(configs):
        rows.append(config | {"config": index, "kick": None, "age": 0.0})
        for kick, age in itertools.product(preset.kicks, preset.ages):
            rows.append(config | {"config": index, "kick": kick, "age": float(age)})
    return rows


def plan(preset: TablePreset) -> list[Chunk]:
    """The table cut into chunks of whole configs sharing data, at most ``max_models`` each."""
    rows = table_rows(preset)
    chunks: list[Chunk] = []
    start = 0
    for _, group in itertools.groupby(rows, key=lambda row: [row[k] for k in SHARED]):
        members = list(group)
        per_config = 1 + len(preset.kicks) * len(preset.ages)
        step = max(1, preset.max_models // per_config) * per_config
        for at in range(0, len(members), step):
            part = tuple(members[at : at + step])
            chunks.append(Chunk(len(chunks), start + at, part))
        start += len(members)
    return chunks


def _tiny() -> TablePreset:
    grid = TableGrid(ps=(11,), train_fractions=(0.5,), weight_decays=(1.0,), lrs=(1e-2,))
    grid = dataclasses.replace(grid, embed_dims=(8,), hidden_dims=(16,))
    kicks = tuple(
        k for k in TABLE_KICKS if k.kind in (LR_CYCLE, ORTHO_GRAD, SGD_SWITCH, NORM_RESCALE)
    )
    return TablePreset((grid,), kicks, (1.0,), 300, 10, 64, "a test: seconds")


def _cpu() -> TablePreset:
    """MLPs over three ops at p 23 with train fractions 0.6 and 0.8 (where plain AdamW groks
    within a few thousand steps at this size; at 0.2-0.5 almost none does in 8,000, see the
    cpu-span bank) and weight decay 0-3, plus a transformer, at the CPU's budget (about 20 min on
    two cores): 2,500 steps, ≥ 14× every run's memorization step, kicks at 1× and 4× it."""
    mlp = TableGrid(
        ops=("add", "mul", "x2y2"),
        train_fractions=(0.6, 0.8),
        weight_decays=(0.0, 0.3, 1.0, 3.0),
    )
    transformer = TableGrid(
        archs=("transformer",), train_fractions=(0.8,), weight_decays=(1.0,), hidden_dims=(64,)
    )
    grids = (mlp, transformer)
    return TablePreset(grids, TABLE_KICKS, (1.0, 4.0), 2_500, 25, 42, "CPU table, ~20 min")


PRESETS: dict[str, Callable[[], TablePreset]] = {"tiny": _tiny, "cpu": _cpu}


# -- per run, per group, per kick ------------------------------------------------------------------
@dataclass(frozen=True)
class RunOutcome:
    """One table run, judged from its curve."""

    config: int
    group: str
    kick: str  # PLAIN for the plain run
    age: float
    weight_decay: float
    kick_step: int | None
    memorized_step: int | None
    grok_step: int | None
    forgot: bool
    rollback_step: int | None
    norm_trend: float | None  # log |w| change over the 4 records before the kick (plain run)


def wd_band(weight_decay: float) -> str:
    if weight_decay == 0:
        return "wd 0"
    return "wd 0.1-0.3" if weight_decay < 1 else "wd 1-3"


def group_of(row: Mapping[str, Any]) -> str:
    return f"{row['arch']} {row['op']} {wd_band(row['weight_decay'])}"


def first_step(steps: np.ndarray, hit: np.ndarray) -> int | None:
    return int(steps[int(np.argmax(hit))]) if hit.any() else None


def forgot(steps: np.ndarray, train_acc: np.ndarray, after: int) -> bool:
    """A train-accuracy drop of ``FORGET_DROP`` below its best (≥ 0.5) at or after step
    ``after`` that is not back within ``FORGET_WINDOW`` steps (or by the end)."""
    best = np.maximum.accumulate(train_acc)
    for i in np.flatnonzero((steps >= after) & (best >= 0.5) & (train_acc < best - FORGET_DROP)):
        within = (steps > steps[i]) & (steps <= steps[i] + FORGET_WINDOW)
        if not (train_acc[within] >= best[i] - FORGET_DROP / 4).any():
            return True
    return False


def would_roll_back(
    steps: np.ndarray, train_loss: np.ndarray, train_acc: np.ndarray, kick_step: int, kick: Kick
) -> int | None:
    """The step at which ``KickPolicy.harm`` (default ``KickConfig`` margins and window) would
    have ordered a rollback of a kick applied at ``kick_step``; judged helpful once it groks."""
    policy = KickPolicy(KickConfig(kicks=(kick,)))
    trial = policy.trial("run")
    before = steps <= kick_step
    if not before.any():
        return None
    i0 = int(np.flatnonzero(before)[-1])
    trial.applied.append((0, kick, float(kick_step)))
    trial.baseline = (float(train_loss[i0]), float(train_acc[i0]))
    for i in range(i0 + 1, len(steps)):
        loss, acc = float(train_loss[i]), float(train_acc[i])
        if policy.harm("run", float(steps[i]), (loss, acc), diverged=not math.isfinite(loss)):
            return int(steps[i])
    return None


def judge_chunk(chunk: Chunk, curves: np.ndarray, steps: np.ndarray) -> list[RunOutcome]:
    """Every run of a trained chunk, judged from its curves."""
    rows = chunk.rows
    out = []
    plain = {row["config"]: j for j, row in enumerate(rows) if row["kick"] is None}
    for j, row in enumerate(rows):
        curve = {name: curves[j, :, k] for k, name in enumerate(METRICS)}
        base = curves[plain[row["config"]]]
        memorized = first_step(steps, base[:, _COLUMN["train_acc"]] >= MEMORIZED_AT)
        kick: TableKick | None = row["kick"]
        kick_step = None
        if kick is not None and memorized is not None:
            kick_step = round(row["age"] * memorized)
            if kick_step >= steps[-1]:
                kick_step = None
        trend = None
        if memorized is not None:
            at = int(np.searchsorted(steps, kick_step if kick_step is not None else memorized))
            norms = base[max(at - 4, 0) : at + 1, _COLUMN["weight_norm"]]
            trend = float(np.log(norms[-1] / norms[0])) if len(norms) > 1 else 0.0
        rollback = None
        if kick_step is not None:
            core = kick.kick if kick is not None and kick.kick is not None else Kick(ORTHO_GRAD)
            rollback = would_roll_back(
                steps, curve["train_loss"], curve["train_acc"], kick_step, core
            )
        out.append(
            RunOutcome(
                config=int(row["config"]),
                group=group_of(row),
                kick=PLAIN if kick is None else kick.label,
                age=float(row["age"]),
                weight_decay=float(row["weight_decay"]),
                kick_step=kick_step,
                memorized_step=memorized,
                grok_step=first_step(steps, curve["val_acc"] >= GROK_AT),
                forgot=forgot(steps, curve["train_acc"], kick_step or 0),
                rollback_step=rollback,
                norm_trend=trend,
            )
        )
    return out


DEFAULTS = "defaults"  # the label of the first kick the product's defaults would give


def defaults_outcomes(
    outcomes: Sequence[RunOutcome], kicks: Sequence[TableKick]
) -> list[RunOutcome]:
    """Per config, the run of the first kick ``KickPolicy(KickConfig())`` (the product's
    defaults and ``FirstKick`` rules) picks for a trial of its weight decay, at age 1×; a config
    whose pick is not in the table is left out (say so when it is)."""
    by_kick = {k.kick: k.label for k in kicks if k.kick is not None}
    runs = {(o.config, o.kick, o.age): o for o in outcomes}
    picked = []
    for o in outcomes:
        if o.kick != PLAIN:
            continue
        policy = KickPolicy(KickConfig(probe_trials=0))
        policy.absorb("trial", {CONTROL_WEIGHT_DECAY: o.weight_decay}, (0.0, 1.0))
        chosen = policy.choose("trial", 0.0, (0.0, 1.0))
        label = None if chosen is None else by_kick.get(chosen[1])
        run = runs.get((o.config, label, 1.0)) if label is not None else None
        if run is not None:
            picked.append(dataclasses.replace(run, kick=DEFAULTS, age=0.0))
    return picked


def variant(outcome: RunOutcome) -> str:
    """A kick at one age: ``"lr×3 300 @2×"``; the plain run is ``PLAIN``."""
    if outcome.kick in (PLAIN, DEFAULTS):
        return outcome.kick
    return f"{outcome.kick} @{outcome.age:g}×"


def summarize(outcomes: Sequence[RunOutcome], budget: int) -> list[dict[str, Any]]:
    """One row per (group, variant) and per variant over all groups (``group`` "all"):
    runs, grokked, median steps to grok (never = ``budget``), speed-up of that median against
    the plain runs', runs grokking only with it, lost, forgetting, rollbacks, and ``ceiling``:
    the plain median over the plain runs' median memorization step, the most any kick can do
    once a run has memorized (it cannot grok before it fits its training set)."""
    plain = {o.config: o for o in outcomes if o.kick == PLAIN}
    by: dict[tuple[str, str], list[RunOutcome]] = defaultdict(list)
    for o in outcomes:
        by[(o.group, variant(o))].append(o)
        by[("all", variant(o))].append(o)
    rows = []
    for (group, name), runs in sorted(by.items()):
        bases = [plain[o.config] for o in runs]
        median = statistics.median(o.grok_step or budget for o in runs)
        base_median = statistics.median(o.grok_step or budget for o in bases)
        memorized = [o.memorized_step for o in bases if o.memorized_step]
        ceiling = base_median / statistics.median(memorized) if memorized else math.nan
        rows.append(
            {
                "group": group,
                "variant": name,
                "runs": len(runs),
                "grokked": sum(o.grok_step is not None for o in runs),
                "median_steps": median,
                "plain_median_steps": base_median,
                "speedup": base_median / median,
                "grok_only_with": sum(
                    o.grok_step is not None and b.grok_step is None
                    for o, b in zip(runs, bases, strict=True)
                ),
                "lost": sum(
                    o.grok_step is None and b.grok_step is not None
                    for o, b in zip(runs, bases, strict=True)
                ),
                "forgetting": sum(o.forgot for o in runs),
                "rollbacks": sum(o.rollback_step is not None for o in runs),
                "ceiling": ceiling,
            }
        )
    return rows


def worst_groups(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per variant: its worst group's speed-up (and which), runs lost and forgetting over all
    groups; best first by (no run lost, worst-group speed-up)."""
    by: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["group"] != "all":
            by[row["variant"]].append(row)
    out = []
    for name, groups in by.items():
        worst = min(groups, key=lambda r: r["speedup"])
        out.append(
            {
                "variant": name,
                "worst_group": worst["group"],
                "worst_speedup": worst["speedup"],
                "worst_ceiling": worst["ceiling"],
                "lost": sum(r["lost"] for r in groups),
                "grok_only_with": sum(r["grok_only_with"] for r in groups),
                "forgetting": sum(r["forgetting"] for r in groups),
                "rollbacks": sum(r["rollbacks"] for r in groups),
                "runs": sum(r["runs"] for r in groups),
                "grokked": sum(r["grokked"] for r in groups),
            }
        )
    out.sort(key=lambda r: (r["lost"] > 0, -r["worst_speedup"]))
    return out


def best_per_group(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per group, the variant with the largest speed-up among those that lose no run there."""
    by: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["group"] != "all" and row["variant"] != PLAIN:
            by[row["group"]].append(row)
    out = []
    for _, candidates in sorted(by.items()):
        safe = [r for r in candidates if r["lost"] == 0] or candidates
        best = max(safe, key=lambda r: (r["speedup"], -r["forgetting"]))
        out.append(dict(best))
    return out


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def markdown(rows: Sequence[Mapping[str, Any]], columns: Iterable[str]) -> str:
    names = list(columns)
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for row in rows:
        cells = [_fmt(row[n]) if isinstance(row[n], float) else str(row[n]) for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_table(
    preset: TablePreset,
    jobs: int = 1,
    device: str = "cpu",
    bar: bool = False,
    curves: dict[int, np.ndarray] | None = None,
) -> list[RunOutcome]:
    """Train every chunk of ``preset`` (``jobs`` processes) and judge every run. ``curves``
    (chunk index -> curves): chunks found there are judged without training, the others are
    trained and added to it."""
    chunks = plan(preset)
    steps = record_steps(preset.steps, preset.record_every)
    outcomes: list[RunOutcome] = []
    curves = {} if curves is None else curves
    for chunk in chunks:
        if chunk.index in curves:
            outcomes += judge_chunk(chunk, curves[chunk.index], steps)
    chunks = [chunk for chunk in chunks if chunk.index not in curves]
    total = sum(len(c.rows) for c in chunks) * preset.steps
    done = [0]
    began = time.perf_counter()

    def advance(chunk: Chunk, n: int) -> None:
        done[0] += n * len(chunk.rows)
        if bar:
            rate = done[0] / max(time.perf_counter() - began, 1e-9)
            left = (total - done[0]) / max(rate, 1e-9)
            print(
                f"\r{done[0] / total:6.1%} model-steps, ~{left:.0f} s left", end="", file=sys.stderr
            )

    for chunk, trained in train_chunks(
        chunks, preset.steps, preset.record_every, device, jobs, advance, train_kicked_chunk
    ):
        curves[chunk.index] = trained
        outcomes += judge_chunk(chunk, trained, steps)
    if bar:
        print(file=sys.stderr)
    outcomes.sort(key=lambda o: (o.config, o.kick, o.age))
    return outcomes


def kicks_main(argv: Sequence[str] | None = None) -> int:
    """``grokschedule bench kicks``: train the table, print per-group and worst-group tables,
    write every run and the tables as JSON."""
    parser = argparse.ArgumentParser(
        prog="grokschedule bench kicks", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--tiny", action="store_true", help="the test's preset (seconds)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (one thread each)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="write runs and tables here as JSON")
    parser.add_argument(
        "--curves",
        type=Path,
        help="an .npz of every chunk's curves: read if it exists (those chunks are not trained "
        "again), written after",
    )
    parser.add_argument("--no-bar", action="store_true")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    preset = PRESETS["tiny" if args.tiny else args.preset]()
    chunks = plan(preset)
    models = sum(len(c.rows) for c in chunks)
    print(
        f"kick table: {models} models ({len(chunks)} chunks), {preset.steps} steps, "
        f"{len(preset.kicks)} kicks × ages {preset.ages} ({preset.about})"
    )
    began = time.perf_counter()
    curves: dict[int, np.ndarray] = {}
    if args.curves is not None and args.curves.exists():
        with np.load(args.curves) as saved:
            curves = {int(name.split("-")[1]): saved[name] for name in saved.files}
    outcomes = run_table(preset, args.jobs, args.device, not args.no_bar, curves)
    if args.curves is not None:
        np.savez_compressed(args.curves, **{f"chunk-{i}": c for i, c in curves.items()})
    wall = time.perf_counter() - began
    # The defaults' row is derived from the runs above (each config's run of the kick they
    # pick); it is in the tables, not among the runs.
    rows = summarize(outcomes + defaults_outcomes(outcomes, preset.kicks), preset.steps)
    worst = worst_groups(rows)
    best = best_per_group(rows)
    columns = ("variant", "worst_group", "worst_speedup", "worst_ceiling", "lost", "grok_only_with")
    print("\nPer kick, its worst group (best first):")
    print(markdown(worst, (*columns, "forgetting", "rollbacks", "grokked", "runs")))
    print("\nPer group, plain AdamW and the best kick that loses no run there:")
    plain = [r for r in rows if r["variant"] == PLAIN and r["group"] != "all"]
    merged = [
        {
            "group": p["group"],
            "plain grokked": f"{p['grokked']}/{p['runs']}",
            "plain median": p["median_steps"],
            "best kick": b["variant"],
            "grokked": f"{b['grokked']}/{b['runs']}",
            "median": b["median_steps"],
            "speedup": b["speedup"],
            "ceiling": p["ceiling"],
            "lost": b["lost"],
            "forgetting": b["forgetting"],
        }
        for p, b in zip(plain, best, strict=True)
    ]
    print(markdown(merged, merged[0].keys() if merged else ()))
    forgetting = [o for o in outcomes if o.forgot]
    print(f"\nforgetting incidents: {len(forgetting)}")
    for o in forgetting[:20]:
        print(f"  config {o.config} ({o.group}) {variant(o)}: kick at {o.kick_step}")
    print(f"\n{len(outcomes)} runs in {wall:.0f} s")
    if args.out is not None:
        args.out.write_text(
            json.dumps(
                {
                    "preset": args.preset if not args.tiny else "tiny",
                    "steps": preset.steps,
                    "worst": worst,
                    "best_per_group": best,
                    "rows": rows,
                    "runs": [dataclasses.asdict(o) for o in outcomes],
                },
                indent=1,
            )
        )
    return 0
