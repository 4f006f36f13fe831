"""Chunks of a curve bank: the unit of work that is trained at once, saved, and skipped on rerun.

A chunk is one batch of models that share their data (the same task split) and their shapes, so
``ModelBatch`` trains them in lockstep. Its curves are kept in a chunk directory as one ``.npy``
each, next to a manifest naming the bank they belong to, so generation can stop at any point
(Ctrl-C, a time limit, ``max_new_chunks``) and a rerun trains only what is missing; several
worker processes can train chunks side by side (``jobs``).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import queue
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grokschedule.bench.bank_models import METRICS, ModelBatch, flush_denormals, model_step_cost
from grokschedule.training.modular.task import ModularTask

Row = Mapping[str, Any]
MANIFEST = "bank.json"


def record_steps(steps: int, record_every: int) -> np.ndarray:
    """The steps ModularTrainer.run evaluates at: every ``record_every``, and the last."""
    return np.unique(np.r_[np.arange(record_every, steps + 1, record_every), steps])


@dataclass(frozen=True)
class Chunk:
    """Bank rows ``start:start + len(rows)``, which share their task and model shapes."""

    index: int
    start: int
    rows: tuple[Row, ...]

    @property
    def file_name(self) -> str:
        return f"chunk-{self.index:05d}.npy"

    def task(self) -> ModularTask:
        first = self.rows[0]
        return ModularTask(first["op"], first["p"], first["train_fraction"], first["seed"])

    def data(self, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The task's split on ``device``: x_train, y_train, x_val, y_val."""
        x_train, y_train, x_val, y_val = (tensor.to(device) for tensor in self.task().split())
        return x_train, y_train, x_val, y_val

    def models(self, device: str) -> ModelBatch:
        """The chunk's models on ``device``, one per row: the shapes and optimizer of the first
        row (the chunk's, shared), each model's seed, init scale, lr and weight decay (and
        momentum, for SGD) of its own row. Its trainers (``train_chunk``, the kick table's) build
        them here, so a row means the same model in every bank."""
        first = self.rows[0]
        sgd = first["optimizer"] == "sgd"
        return ModelBatch.create(
            first["arch"],
            first["p"],
            first["embed_dim"],
            first["hidden_dim"],
            seeds=[row["seed"] for row in self.rows],
            init_scales=[row["init_scale"] for row in self.rows],
            optimizer=first["optimizer"],
            lrs=[row["lr"] for row in self.rows],
            weight_decays=[row["weight_decay"] for row in self.rows],
            momentums=[row["momentum"] for row in self.rows] if sgd else None,
            device=device,
        )

    def step_cost(self) -> float:
        """Rough cost of one step of every model in the chunk (for the ETA and job order)."""
        first, n_train = self.rows[0], len(self.task().split()[0])
        cost = model_step_cost(
            first["arch"], first["p"], first["embed_dim"], first["hidden_dim"], n_train
        )
        return cost * len(self.rows)

    def __str__(self) -> str:
        first = self.rows[0]
        return (
            f"chunk {self.index + 1} ({first['arch']}/{first['optimizer']} "
            f"{first['op']} p={first['p']} "
            f"train_fraction={first['train_fraction']} seed={first['seed']} "
            f"E={first['embed_dim']} H={first['hidden_dim']}, {len(self.rows)} models)"
        )


def train_chunk(
    chunk: Chunk,
    steps: int,
    record_every: int,
    device: str = "cpu",
    advance: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Train the chunk's models for ``steps`` full-batch steps, on one thread with subnormals
    flushed; their curves as float32 (models, records, len(METRICS)). ``advance(n)`` is told
    after every ``n`` steps taken."""
    x_train, y_train, x_val, y_val = chunk.data(device)
    batch = chunk.models(device)
    at = record_steps(steps, record_every)
    recorded = torch.empty(len(chunk.rows), len(at), len(METRICS), device=device)
    done = 0
    with flush_denormals(), one_thread():
        for index, until in enumerate(at):
            for _ in range(until - done):
                batch.step(x_train, y_train)
            if advance is not None:
                advance(int(until) - done)
            done = int(until)
            recorded[:, index] = batch.metrics(x_train, y_train, x_val, y_val)
    return recorded.cpu().numpy()


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Train a chunk on one CPU thread, then put the thread count back. Summation order then
    does not depend on the machine's thread count, so a grid gives the same bits everywhere on
    one torch build; and these small batched ops ran 3-6x slower on two threads than on one on
    a busy 2-core box. Parallelism comes from ``jobs`` worker processes instead."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _json_normal(value: Any) -> Any:
    return json.loads(json.dumps(value))


class ChunkStore:
    """A chunk directory: ``bank.json`` (what bank the chunks belong to) and one ``.npy`` of
    curves per finished chunk, each written to a partial file and renamed, so an interrupted
    write leaves no chunk behind. Opening a directory made for another bank is a ValueError."""

    def __init__(self, directory: str | Path, manifest: Mapping[str, Any]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / MANIFEST
        wanted = _json_normal(manifest)
        if path.exists():
            found = json.loads(path.read_text())
            if found != wanted:
                keys = wanted.keys() | found.keys()
                differ = sorted(key for key in keys if found.get(key) != wanted.get(key))
                raise ValueError(
                    f"chunk_dir {self.directory} holds chunks of another bank ({', '.join(differ)} "
                    "differ); use another chunk_dir or empty this one"
                )
        else:
            _write_atomic(path, lambda file: file.write(json.dumps(wanted, indent=1).encode()))

    def load(self, chunk: Chunk, shape: tuple[int, ...]) -> np.ndarray | None:
        """The chunk's saved curves, or None if it is not finished."""
        path = self.directory / chunk.file_name
        if not path.exists():
            return None
        curves: np.ndarray = np.load(path, allow_pickle=False)
        if curves.shape != shape:
            raise ValueError(f"{path} holds curves of shape {curves.shape}, expected {shape}")
        return curves

    def save(self, chunk: Chunk, curves: np.ndarray) -> None:
        _write_atomic(self.directory / chunk.file_name, lambda file: np.save(file, curves))


def _write_atomic(path: Path, write: Callable[[Any], object]) -> None:
    temporary = path.with_name(path.name + ".partial")
    with open(temporary, "wb") as file:
        write(file)
    os.replace(temporary, path)


# Set in each worker process by _init_worker: where to send (chunk index, steps taken).
_progress_queue: Any = None


def _init_worker(progress_queue: Any) -> None:
    global _progress_queue
    _progress_queue = progress_queue


# How a chunk is trained: ``train_chunk``, or another function of the same signature (the kick
# table's, which kicks some of the chunk's models); module-level, so worker processes get it.
ChunkTrainer = Callable[..., np.ndarray]


def _train_in_worker(
    chunk: Chunk, steps: int, record_every: int, device: str, train: ChunkTrainer
) -> np.ndarray:
    def advance(n: int) -> None:
        _progress_queue.put((chunk.index, n))

    return train(chunk, steps, record_every, device, advance)


def train_chunks(
    chunks: Sequence[Chunk],
    steps: int,
    record_every: int,
    device: str,
    jobs: int,
    advance: Callable[[Chunk, int], None],
    train: ChunkTrainer = train_chunk,
) -> Iterator[tuple[Chunk, np.ndarray]]:
    """Train ``chunks`` (with ``train``) and yield each with its curves as it finishes: in this
    process for one job, else in ``jobs`` spawned processes, longest chunks first so none is
    left running alone at the end. ``advance(chunk, n)`` hears of every ``n`` steps."""
    if jobs == 1:
        for chunk in chunks:
            yield chunk, train(chunk, steps, record_every, device, partial(advance, chunk))
        return
    context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools
    progress: Any = context.Queue()
    by_index = {chunk.index: chunk for chunk in chunks}
    order = sorted(chunks, key=lambda chunk: -chunk.step_cost())
    pool = ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_init_worker, initargs=(progress,)
    )
    try:
        pending: dict[Future[np.ndarray], Chunk] = {
            pool.submit(_train_in_worker, chunk, steps, record_every, device, train): chunk
            for chunk in order
        }
        while pending:
            finished, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for index, n in _drain(progress):
                advance(by_index[index], n)
            for future in finished:
                yield pending.pop(future), future.result()
    finally:  # on Ctrl-C or an error, start no more chunks (the finished ones are saved)
        pool.shutdown(wait=True, cancel_futures=True)


def _drain(progress: Any) -> Iterable[tuple[int, int]]:
    while True:
        try:
            yield progress.get_nowait()
        except queue.Empty:
            return
