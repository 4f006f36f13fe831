"""Curve bank: many small grokking MLPs trained at once, saved as one file of learning curves.

The scheduler's signals and thresholds are tuned and scored offline against real grokking curves,
and it takes hundreds of them (lr × weight decay × init scale × seed × task) to see both the runs
that grok and the ones that only memorize. Trained one by one these cost hours; here every model
in a batch shares the data, its parameters carry a leading model dimension, and forward, backward
and AdamW are batched kernels, so a GPU trains hundreds of models for the price of a few.

Each bank row is the run ``ModularTrainer(TrainConfig(arch="mlp", ...))`` would make with the same
op, p, train fraction, seed, lr, weight decay, init scale and sizes: same split, bit-identical init,
full-batch AdamW with betas (0.9, 0.98), and the same metrics at the same steps.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from grokschedule.training.modular.task import ModularTask

METRICS = (
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "weight_norm",
    "val_confidence",
    "val_correct_prob",
    "zero_loss_share",
)
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
)
# Metric columns of the GPU bank layout (shared/banks/README.md), in order.
GPU_LAYOUT_METRICS = (
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "weight_norm",
    "val_confidence",
    "val_correct_prob",
)
AXES = ("ops", "ps", "train_fractions", "weight_decays", "lrs", "seeds", "init_scales")
BETA1, BETA2, EPS = 0.9, 0.98, 1e-8  # make_optimizer("adamw") in tasks/training.py


@dataclass(frozen=True)
class BankGrid:
    """The cross product of these values is the bank; checked up front so a typo costs no compute.

    ``seed`` picks both the train/val split and the init, as in ``TrainConfig``. Models sharing
    (op, p, train_fraction, seed) share their data and are trained as one batch.
    """

    ops: tuple[str, ...] = ("add",)
    ps: tuple[int, ...] = (47,)
    train_fractions: tuple[float, ...] = (0.5,)
    weight_decays: tuple[float, ...] = (0.0, 0.1, 0.3, 1.0)
    lrs: tuple[float, ...] = (1e-3, 3e-3)
    seeds: tuple[int, ...] = (0, 1)
    init_scales: tuple[float, ...] = (1.0,)
    embed_dim: int = 64
    hidden_dim: int = 256

    def __post_init__(self) -> None:
        for name in AXES:
            values = getattr(self, name)
            if not isinstance(values, tuple) or not values:
                raise ValueError(f"BankGrid.{name} must be a non-empty tuple, got {values!r}")
            if len(set(values)) != len(values):
                raise ValueError(f"BankGrid.{name} has duplicates: {values!r}")
        rules: dict[str, tuple[type | tuple[type, ...], str, Callable[[float], bool]]] = {
            "ps": (int, "ints", lambda v: True),
            "seeds": (int, "ints >= 0", lambda v: v >= 0),
            "weight_decays": ((int, float), "numbers >= 0", lambda v: v >= 0),
            "lrs": ((int, float), "numbers > 0", lambda v: v > 0),
            "init_scales": ((int, float), "numbers > 0", lambda v: v > 0),
        }
        for name, (kind, rule, ok) in rules.items():
            for value in getattr(self, name):
                if not isinstance(value, kind) or not ok(value):  # NaN fails every rule
                    raise ValueError(f"BankGrid.{name} values must be {rule}, got {value!r}")
        # The task owns the rules for op, p and train_fraction; only the field name is added here.
        for name, key in (("ops", "op"), ("ps", "p"), ("train_fractions", "train_fraction")):
            for value in getattr(self, name):
                try:
                    ModularTask(**{key: value})
                except (ValueError, TypeError) as error:
                    raise ValueError(f"BankGrid.{name}: {error}") from None
        for name in ("embed_dim", "hidden_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"BankGrid.{name} must be an int > 0, got {value!r}")

    def rows(self) -> list[dict[str, str | int | float]]:
        """One dict per model with the GRID_COLUMNS keys, ordered so each data-sharing group is a
        contiguous block (bank row i is ``rows()[i]``)."""
        product = itertools.product(
            self.ops,
            self.ps,
            self.train_fractions,
            self.seeds,
            self.weight_decays,
            self.lrs,
            self.init_scales,
        )
        return [
            dict(
                op=op,
                p=p,
                train_fraction=float(fraction),
                weight_decay=float(wd),
                lr=float(lr),
                init_scale=float(scale),
                seed=seed,
                embed_dim=self.embed_dim,
                hidden_dim=self.hidden_dim,
            )
            for op, p, fraction, seed, wd, lr, scale in product
        ]

    def batches(self, max_models: int) -> list[tuple[int, int]]:
        """``(start, stop)`` row ranges: each data-sharing group split into near-equal batches of
        at most ``max_models`` (even sizes keep the last batch from running a sliver of a GPU)."""
        group = len(self.weight_decays) * len(self.lrs) * len(self.init_scales)
        n_groups = len(self.ops) * len(self.ps) * len(self.train_fractions) * len(self.seeds)
        cuts = np.linspace(0, group, math.ceil(group / max_models) + 1).round().astype(int)
        return [
            (g * group + int(a), g * group + int(b))
            for g in range(n_groups)
            for a, b in itertools.pairwise(cuts)
        ]


def init_mlp(
    p: int, embed_dim: int, hidden_dim: int, seed: int, init_scale: float
) -> list[torch.Tensor]:
    """One model's ``[embed, w1, b1, w2, b2]``, bit-identical to ``build_model("mlp", ...)`` right
    after ``torch.manual_seed(seed)`` (same generator, draw order and init rules), so bank rows and
    single-model runs are the same experiment. Weights are stored input-major: ``w1`` is (2E, H)."""
    generator = torch.Generator().manual_seed(seed)
    params = [torch.nn.init.normal_(torch.empty(p, embed_dim), generator=generator)]
    for fan_in, fan_out in ((2 * embed_dim, hidden_dim), (hidden_dim, p)):
        weight = torch.empty(fan_out, fan_in)
        torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
        bound = 1 / math.sqrt(fan_in)
        bias = torch.nn.init.uniform_(torch.empty(fan_out), -bound, bound, generator=generator)
        params += [weight.T, bias]
    return [param.mul(init_scale).contiguous() for param in params]


class MLPBatch:
    """M same-shaped modular MLPs stacked on a leading model dimension, each with its own lr and
    weight decay, trained in lockstep by batched kernels.

    Forward, backward and AdamW are written out by hand: the net is three matmuls, and without an
    autograd graph a step is a fixed sequence of in-place tensor ops that torch.compile can fuse
    and a CUDA graph can capture.
    """

    def __init__(self, params: list[torch.Tensor], lr: torch.Tensor, weight_decay: torch.Tensor):
        self.params = params  # embed (M,p,E), w1 (M,2E,H), b1 (M,H), w2 (M,H,p), b2 (M,p)
        self.lr, self.weight_decay = lr, weight_decay  # (M,)
        self.exp_avg = [torch.zeros_like(param) for param in params]
        self.exp_avg_sq = [torch.zeros_like(param) for param in params]
        # A tensor, not an int, so the bias corrections stay inside a compiled or captured step.
        self.t = torch.zeros((), dtype=torch.float64, device=lr.device)

    @classmethod
    def create(
        cls,
        p: int,
        embed_dim: int,
        hidden_dim: int,
        seeds: Sequence[int],
        init_scales: Sequence[float],
        lrs: Sequence[float],
        weight_decays: Sequence[float],
        device: str | torch.device = "cpu",
    ) -> MLPBatch:
        """Init on CPU (so a seed gives the same weights on every device), then move."""
        models = [
            init_mlp(p, embed_dim, hidden_dim, seed, scale)
            for seed, scale in zip(seeds, init_scales, strict=True)
        ]
        params = [torch.stack(tensors).to(device) for tensors in zip(*models, strict=True)]

        def vector(values: Sequence[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device)

        return cls(params, vector(lrs), vector(weight_decays))

    def _hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Hidden activations (M, N, H) for pairs ``x`` (N, 2), the operand tables (M, 2, p, H)
        they were gathered from, and the gathered rows (M*N, 2) of the flattened tables.

        ``w1 @ [emb(x); emb(y)] = w1[:E] emb(x) + w1[E:] emb(y)``, so project the p embeddings once
        per operand and gather rows, instead of an (N, 2E) × (2E, H) matmul per model; the bias
        rides on the x table (p rows, not N). One embedding_bag gathers and sums both rows."""
        embed, w1, b1 = self.params[:3]
        n_models, p, embed_dim = embed.shape
        tables = embed[:, None] @ w1.view(n_models, 2, embed_dim, -1)
        tables[:, 0] += b1[:, None]
        first_rows = torch.arange(n_models, device=x.device)[:, None, None] * 2 * p
        rows = (first_rows + torch.arange(2, device=x.device) * p + x).flatten(0, 1)
        hidden = F.embedding_bag(rows, tables.flatten(0, 2), mode="sum")
        return hidden.view(n_models, len(x), -1).relu_(), tables, rows

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(M, N, p) logits for operand pairs ``x`` (N, 2)."""
        hidden = self._hidden(x)[0]
        return torch.baddbmm(self.params[4][:, None], hidden, self.params[3])

    def loss_and_grads(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Mean cross-entropy per model (M,) and its gradients, one per parameter."""
        embed, w1, _, w2, b2 = self.params
        n_models, _, embed_dim = embed.shape
        hidden, tables, rows = self._hidden(x)
        log_probs = torch.baddbmm(b2[:, None], hidden, w2).log_softmax(-1)
        target = y.expand(n_models, -1)[..., None]
        loss = -log_probs.gather(-1, target).mean((1, 2))
        # d(mean CE)/d logits = (softmax - onehot) / N
        d_logits = log_probs.exp_()
        d_logits.scatter_(-1, target, d_logits.gather(-1, target) - 1).div_(len(y))
        d_w2 = torch.bmm(hidden.transpose(1, 2), d_logits)
        relu_grad = hidden.sign_()  # hidden >= 0 and is not needed again; a float mask is fast
        d_hidden = torch.bmm(d_logits, w2.transpose(1, 2)).mul_(relu_grad).flatten(0, 1)
        # Backward of the gather: scatter-add each row's gradient into the table rows it read.
        d_tables = torch.zeros_like(tables).flatten(0, 2)
        d_tables.index_add_(0, rows[:, 0], d_hidden).index_add_(0, rows[:, 1], d_hidden)
        d_tables = d_tables.view_as(tables)
        w1_by_operand = w1.view(n_models, 2, embed_dim, -1)
        d_embed = (d_tables @ w1_by_operand.transpose(2, 3)).sum(1)
        d_w1 = (embed.transpose(1, 2)[:, None] @ d_tables).view_as(w1)
        return loss, [d_embed, d_w1, d_tables[:, 0].sum(1), d_w2, d_logits.sum(1)]

    def adamw_(self, grads: list[torch.Tensor]) -> None:
        """torch.optim.AdamW's update (decoupled decay, bias correction), with per-model lr and
        weight decay broadcast over each parameter's model dimension."""
        self.t += 1
        bias_correction1 = 1 - BETA1**self.t
        bias_correction2_sqrt = (1 - BETA2**self.t).sqrt()
        for param, grad, exp_avg, exp_avg_sq in zip(
            self.params, grads, self.exp_avg, self.exp_avg_sq, strict=True
        ):
            shape = (-1,) + (1,) * (param.dim() - 1)
            lr = self.lr.view(shape)
            param.mul_(1 - lr * self.weight_decay.view(shape))
            exp_avg.lerp_(grad, 1 - BETA1)
            exp_avg_sq.mul_(BETA2).addcmul_(grad, grad, value=1 - BETA2)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(EPS)
            param.sub_(exp_avg / denom * (lr / bias_correction1))

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One full-batch AdamW step for every model."""
        self.adamw_(self.loss_and_grads(x, y)[1])

    def metrics(
        self, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor
    ) -> torch.Tensor:
        """(M, len(METRICS)) float32, computed as ModularTrainer.evaluate does."""
        train_logits, val_logits = self.logits(x_train), self.logits(x_val)
        n_models = len(train_logits)
        train_target = y_train.expand(n_models, -1)[..., None]
        val_target = y_val.expand(n_models, -1)[..., None]
        train_losses = -train_logits.log_softmax(-1).gather(-1, train_target)[..., 0]
        val_log_probs = val_logits.log_softmax(-1)
        val_probs = val_log_probs.exp()
        squares = torch.stack([param.pow(2).flatten(1).sum(1) for param in self.params])
        columns = {
            "train_loss": train_losses.mean(1),
            "train_acc": (train_logits.argmax(-1) == y_train).float().mean(1),
            "val_loss": -val_log_probs.gather(-1, val_target).mean((1, 2)),
            "val_acc": (val_logits.argmax(-1) == y_val).float().mean(1),
            "weight_norm": squares.sum(0).sqrt(),
            "val_confidence": val_probs.amax(-1).mean(1),
            "val_correct_prob": val_probs.gather(-1, val_target).mean((1, 2)),
            "zero_loss_share": (train_losses == 0).float().mean(1),
        }
        return torch.stack([columns[name] for name in METRICS], dim=1)


def _step_fn(
    batch: MLPBatch, x: torch.Tensor, y: torch.Tensor, compile: bool, cuda_graph: bool
) -> Callable[[], None]:
    """A no-argument training step, optionally compiled and/or replayed from a CUDA graph.

    At bank sizes a step is dozens of small kernels, so on a GPU launch overhead rivals compute:
    torch.compile fuses the elementwise work, a CUDA graph removes the per-kernel launches."""
    step = torch.compile(batch.step) if compile else batch.step
    if not cuda_graph:
        return lambda: step(x, y)
    graph, warmup, calls = torch.cuda.CUDAGraph(), 3, 0

    def replay() -> None:
        nonlocal calls
        calls += 1
        if calls <= warmup:  # real steps, on a side stream as capture requires; compiles here
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                step(x, y)
            torch.cuda.current_stream().wait_stream(stream)
            return
        if calls == warmup + 1:
            with torch.cuda.graph(graph):  # records the kernels without running them
                step(x, y)
        graph.replay()

    return replay


def record_steps(steps: int, record_every: int) -> np.ndarray:
    """The steps ModularTrainer.run evaluates at: every ``record_every``, and the last."""
    return np.unique(np.r_[np.arange(record_every, steps + 1, record_every), steps])


def _check_run(
    steps: int, record_every: int, max_models_per_batch: int, device: str, cuda_graph: bool
) -> None:
    for name, value in (
        ("steps", steps),
        ("record_every", record_every),
        ("max_models_per_batch", max_models_per_batch),
    ):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be an int > 0, got {value!r}")
    if cuda_graph and torch.device(device).type != "cuda":
        raise ValueError(f"cuda_graph needs a CUDA device, got device={device!r}")


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Memorizing models drive their gradients and Adam second moments into float32 subnormals,
    which x86 CPUs compute on up to ~100× slower (a batch took 1,000 s instead of 30 s here).
    Flushing them to zero changes only values below 1.2e-38. The setting is process-wide, so it
    is put back afterwards (torch's default is off)."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def generate_bank(
    grid: BankGrid,
    steps: int,
    record_every: int,
    out_path: str | Path,
    device: str = "cpu",
    max_models_per_batch: int = 256,
    progress: Callable[[str], None] | None = None,
    compile: bool = False,
    cuda_graph: bool = False,
) -> Path:
    """Train every model in ``grid`` for ``steps`` full-batch steps and write the curves to
    ``out_path`` (one ``np.savez_compressed`` file, written atomically). ``compile`` and
    ``cuda_graph`` are GPU speedups; the CPU path needs neither."""
    _check_run(steps, record_every, max_models_per_batch, device, cuda_graph)
    rows, at = grid.rows(), record_steps(steps, record_every)
    curves = np.empty((len(rows), len(at), len(METRICS)), dtype=np.float32)
    batches = grid.batches(max_models_per_batch)
    with flush_denormals():
        for number, (start, stop) in enumerate(batches, 1):
            began, chunk, first = time.perf_counter(), rows[start:stop], rows[start]
            task = ModularTask(first["op"], first["p"], first["train_fraction"], first["seed"])
            x_train, y_train, x_val, y_val = (tensor.to(device) for tensor in task.split())
            batch = MLPBatch.create(
                task.p,
                grid.embed_dim,
                grid.hidden_dim,
                [row["seed"] for row in chunk],
                [row["init_scale"] for row in chunk],
                [row["lr"] for row in chunk],
                [row["weight_decay"] for row in chunk],
                device,
            )
            step = _step_fn(batch, x_train, y_train, compile, cuda_graph)
            recorded = torch.empty(len(chunk), len(at), len(METRICS), device=device)
            with torch.no_grad():
                for index, until in enumerate(at):
                    for _ in range(until - (at[index - 1] if index else 0)):
                        step()
                    recorded[:, index] = batch.metrics(x_train, y_train, x_val, y_val)
            curves[start:stop] = recorded.cpu().numpy()
            if progress is not None:
                progress(
                    f"batch {number}/{len(batches)}: {task.op} p={task.p} "
                    f"train_fraction={task.train_fraction} seed={task.seed}, {len(chunk)} models "
                    f"x {steps} steps in {time.perf_counter() - began:.1f}s"
                )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"step": at} | {f"metric/{name}": curves[..., k] for k, name in enumerate(METRICS)}
    arrays |= {f"grid/{column}": np.array([row[column] for row in rows]) for column in GRID_COLUMNS}
    partial = out_path.with_name(out_path.name + ".partial")
    with open(partial, "wb") as file:
        np.savez_compressed(file, **arrays)
    os.replace(partial, out_path)
    return out_path


@dataclass
class CurveBank:
    """A loaded bank: ``metrics[name]`` is (n_models, n_records) float32 sampled at ``steps``, and
    ``grid[column]`` holds each model's hyperparameters (row i of both is the same model)."""

    steps: np.ndarray
    metrics: dict[str, np.ndarray]
    grid: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.grid["op"])

    def curve(self, i: int) -> dict[str, np.ndarray]:
        """Model ``i``'s curve keyed as a live trial reports it (``step``, ``val_acc``,
        ``grok/zero_loss_share``, ...), so a scheduler can be replayed on it. Metrics the bank
        lacks (all NaN) are left out, as a trainable that does not report them would."""
        return {"step": self.steps} | {
            CONTRACT_NAMES[name]: values[i]
            for name, values in self.metrics.items()
            if not np.isnan(values[i]).all()  # a metric the bank does not have is not reported
        }

    def grok_step(self, i: int, threshold: float = 0.95) -> int | None:
        """First recorded step at which model ``i`` reaches ``val_acc >= threshold``, else None."""
        reached = np.flatnonzero(self.metrics["val_acc"][i] >= threshold)
        return int(self.steps[reached[0]]) if len(reached) else None

    @classmethod
    def load(cls, path: str | Path) -> CurveBank:
        """A bank written by ``generate_bank``, or one in the GPU-bank layout of
        ``shared/banks/`` (``steps``, ``metrics`` [models, records, 7], ``op``/``frac``/...)."""
        with np.load(path, allow_pickle=False) as data:
            if "metrics" in data.files:
                return cls._from_gpu_layout(data)
            return cls(
                steps=data["step"],
                metrics={name: data[f"metric/{name}"] for name in METRICS},
                grid={column: data[f"grid/{column}"] for column in GRID_COLUMNS},
            )

    @classmethod
    def _from_gpu_layout(cls, data: Any) -> CurveBank:
        """The shared GPU bank: its seven metric columns (no zero-loss share: NaN, read as not
        reported) and its grid, with the fixed sizes its README states (p 59, embed 128,
        hidden 256, init scale 1)."""
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
        }
        return cls(steps=data["steps"], metrics=metrics, grid=grid)


def bank_main(argv: list[str] | None = None) -> int:
    """``grokschedule bench bank``: generate a bank and report throughput."""
    defaults = BankGrid()
    parser = argparse.ArgumentParser(
        prog="grokschedule bench bank",
        description="Train a grid of grokking MLPs at once and save their curves to one .npz.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output .npz path")
    kinds = (str, int, float, float, float, int, float)
    for name, kind in zip(AXES, kinds, strict=True):
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=kind, nargs="+", default=getattr(defaults, name)
        )
    parser.add_argument("--embed-dim", type=int, default=defaults.embed_dim)
    parser.add_argument("--hidden-dim", type=int, default=defaults.hidden_dim)
    parser.add_argument("--steps", type=int, default=5_000)
    parser.add_argument("--record-every", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-models-per-batch", type=int, default=256)
    parser.add_argument("--compile", action="store_true", help="torch.compile the step (GPU)")
    parser.add_argument("--cuda-graph", action="store_true", help="replay steps from a CUDA graph")
    args = parser.parse_args(argv)
    try:
        grid = BankGrid(
            **{name: tuple(getattr(args, name)) for name in AXES},
            embed_dim=args.embed_dim,
            hidden_dim=args.hidden_dim,
        )
        _check_run(
            args.steps, args.record_every, args.max_models_per_batch, args.device, args.cuda_graph
        )
    except ValueError as error:
        parser.error(str(error))
    began = time.perf_counter()
    path = generate_bank(
        grid,
        args.steps,
        args.record_every,
        args.out,
        args.device,
        args.max_models_per_batch,
        progress=print,
        compile=args.compile,
        cuda_graph=args.cuda_graph,
    )
    wall = time.perf_counter() - began
    n_models = len(grid.rows())
    model_steps = n_models * args.steps
    print(f"wrote {path}")
    print(
        f"models {n_models}, model-steps {model_steps}, wall {wall:.1f}s, "
        f"{model_steps / wall:.1f} model-steps/s, {wall / model_steps * 1e3:.3f} ms per model-step"
    )
    return 0
