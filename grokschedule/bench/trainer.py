"""Throughput, MFU and peak memory of a ~1B Llama under DeepSpeed ZeRO-2/3 on one GPU, what
grokschedule's monitoring costs against the same loop without it, and a plain-PyTorch reference.

    python -m grokschedule.bench.trainer --stages 2 3 --out bench.json      # on an H100
    python -m grokschedule.bench.trainer --tiny                              # anywhere, seconds

``grokschedule bench gpu`` runs the same measurements (``bench_deepspeed``, ``bench_torch``)
next to the curve bank and probe costs, each time-boxed. Ray-free: it runs where only torch,
transformers and DeepSpeed are installed.

Per ZeRO stage one engine is built and two loops alternate on it, ``rounds`` times each, so
drift (clocks, other jobs) hits both alike:

- *plain*: forward, mean token cross-entropy, ``engine.backward``, ``engine.step`` — nothing else;
- *monitored*: what the trainer's loop does (``adapters.trainables.train_loop``): every
  ``poll_every`` steps poll a command source and broadcast; ``DeepSpeedRun.train_step`` (with the
  per-example statistics accumulated on the device) and ``after_step``; every ``report_every``
  steps a report (``report_metrics``: the probe set evaluated, the ZeRO-exact weight norm, the
  metrics reduced). Checkpoints (every 500 steps by default) are not part of it.

Overhead = 1 − plain time / monitored time, on the same engine, batches and loss. The command
source polled is an empty local one: a live control channel adds a Ray round trip per poll.

FLOPs per trained token, for MFU (PaLM, arXiv 2204.02311, appendix B)::

    6·N + 12·L·h·s

N: parameters that do matmuls — all of them but the input embedding, a lookup (the untied LM
head counts); L layers, h hidden size, s sequence length (the attention scores and their
weighted sum, forward and backward, counted for the full s×s square as PaLM does, though causal
kernels skip half). Recomputation under activation checkpointing is not counted (model FLOPs, not
hardware FLOPs). MFU = tokens/s × that / the chip's dense bf16 peak (``PEAK_TFLOPS`` by device
name, or ``--peak-tflops``; None where neither applies). Tokens/s counts trained tokens; the data
are random tokens, which throughput does not depend on.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from grokschedule.training.deepspeed.config import TrainerConfig, prepare_cuda_build_env
from grokschedule.training.deepspeed.task import ExampleStats, Split

if TYPE_CHECKING:
    from grokschedule.training.deepspeed.engine import DeepSpeedRun

# DeepSpeed (``training.deepspeed.engine``, ``.reporting``) is imported where an engine is built
# or driven, so ``bench gpu`` can run its other sections where DeepSpeed is missing or broken.

# Dense (not 2:4 sparse) bf16 tensor-core peak, TFLOP/s, from the vendors' datasheets. Matched
# in order against the CUDA device name: the first key contained in it wins.
PEAK_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM: "NVIDIA H100 80GB HBM3"
    ("A100", 312.0),
    ("L40S", 362.0),
)


@dataclass(frozen=True)
class ModelShape:
    vocab: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    seq: int

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be an int > 0, got {value!r}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not divisible by heads {self.heads}")


# 0.95B parameters: the baseline model of DESIGN.md (hidden 2048, 16 layers, untied 32k vocab).
LLAMA_1B = ModelShape(vocab=32_000, hidden=2048, layers=16, heads=16, intermediate=5632, seq=2048)
TINY = ModelShape(vocab=256, hidden=64, layers=2, heads=4, intermediate=128, seq=64)


class SyntheticLMTask:
    """Next-token prediction on random tokens, in the ``Task`` shape the trainer runs. The model
    is initialized directly on ``device`` (a 1B model's random init takes seconds on a GPU and
    tens of seconds on a CPU)."""

    name = "synthetic-lm"

    def __init__(
        self,
        shape: ModelShape,
        examples: int,
        probe: int,
        activation_checkpointing: bool,
        device: torch.device | None = None,
    ) -> None:
        self.shape = shape
        self.activation_checkpointing = activation_checkpointing
        self.device = device or torch.device("cpu")
        self.tokens_per_example = shape.seq
        generator = torch.Generator().manual_seed(0)
        tokens = torch.randint(shape.vocab, (examples + probe, shape.seq + 1), generator=generator)
        self._train = (tokens[:examples, :-1], tokens[:examples, 1:])
        self._probe = (tokens[examples:, :-1], tokens[examples:, 1:])

    def build_model(self) -> nn.Module:
        from transformers import LlamaConfig, LlamaForCausalLM

        s = self.shape
        config = LlamaConfig(
            vocab_size=s.vocab,
            hidden_size=s.hidden,
            intermediate_size=s.intermediate,
            num_hidden_layers=s.layers,
            num_attention_heads=s.heads,
            num_key_value_heads=s.heads,
            max_position_embeddings=s.seq,
            tie_word_embeddings=False,
        )
        with self.device:
            model = LlamaForCausalLM(config)
        if self.activation_checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": False})
        return model

    def train_split(self) -> Split:
        return self._train

    def eval_splits(self) -> dict[str, Split]:
        return {"probe": self._probe}

    def stats(
        self, model: Callable[..., Any], inputs: torch.Tensor, targets: torch.Tensor
    ) -> ExampleStats:
        logits = model(input_ids=inputs).logits.float()
        token_loss = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        loss = token_loss.mean(1)
        return ExampleStats(
            loss=loss,
            correct=(logits.detach().argmax(-1) == targets).all(1),
            correct_prob=torch.exp(-token_loss.detach()).mean(1),
            zero_loss=loss.detach() == 0,
        )


@dataclass(frozen=True)
class LoopOptions:
    """How one trainer measurement runs; validated before any model is built."""

    precision: str = "bf16"
    micro_batch: int = 8
    accumulation: int = 1
    steps: int = 20  # per loop per round
    rounds: int = 3
    warmup: int = 3
    poll_every: int = 10  # TrainerConfig's default
    report_every: int = 20
    activation_checkpointing: bool = False
    fused_adam: bool | None = None  # None: FusedAdam on CUDA, falling back to torch's AdamW
    peak_tflops: float | None = None

    def __post_init__(self) -> None:
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"precision must be 'bf16' or 'fp32', got {self.precision!r}")
        for name in ("micro_batch", "accumulation", "steps", "rounds", "poll_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be an int > 0, got {value!r}")
        if not isinstance(self.report_every, int) or self.report_every <= 0:
            raise ValueError(f"report_every must be an int > 0, got {self.report_every!r}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        for name in ("poll_every", "report_every"):
            if self.steps % getattr(self, name):
                # Then every timed window holds the same number of polls and reports.
                raise ValueError(
                    f"steps {self.steps} must be a multiple of {name} {getattr(self, name)}"
                )
        if self.peak_tflops is not None and not self.peak_tflops > 0:
            raise ValueError(f"peak_tflops must be > 0, got {self.peak_tflops}")


def plain_step(run: DeepSpeedRun, step: int) -> None:
    """The reference loop: the same engine, batches and loss, no statistics, no monitoring."""
    engine = run.engine
    engine.train()
    x, y = run.task.train_split()
    micro = run.config.micro_batch_size
    accumulation = engine.gradient_accumulation_steps()
    for m in range(accumulation):
        start = ((step * accumulation + m) * micro) % (len(x) - micro + 1)
        inputs, targets = x[start : start + micro].to(run.device), y[start : start + micro]
        logits = engine(input_ids=inputs).logits.float()
        loss = F.cross_entropy(logits.transpose(1, 2), targets.to(run.device))
        engine.set_gradient_accumulation_boundary(m == accumulation - 1)
        engine.backward(loss)
    engine.step()


def no_commands(step: int) -> list[Any]:
    """An empty command source: what the loop polls when nothing is pending."""
    return []


def monitored_step(run: DeepSpeedRun, poll_every: int, report_every: int) -> None:
    """One step as the trainer's loop takes it: poll, train with statistics, report."""
    from grokschedule.training.deepspeed.reporting import poll_commands, report_metrics

    if run.step % poll_every == 0:
        for command in poll_commands(no_commands, run.step):
            run.apply(command)
    run.train_step()
    run.after_step()
    if run.step % report_every == 0:
        report_metrics(run)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_memory() -> tuple[float, str]:
    """Peak GPU memory allocated since the last reset (GiB), or the process's peak RSS on CPU,
    and which of the two it is."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30, "cuda max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "host max RSS"  # KiB


def reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def release_memory() -> None:
    """Give the caching allocator's free blocks back, after an engine or an OOM."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def flops_per_token(n_params: int, shape: ModelShape) -> float:
    """6·N + 12·L·h·s with N the matmul parameters (all but the input embedding)."""
    matmul_params = n_params - shape.vocab * shape.hidden
    return 6.0 * matmul_params + 12.0 * shape.layers * shape.hidden * shape.seq


def dense_bf16_peak(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU by its CUDA name, FLOP/s; None if it is not in the table."""
    return next((t * 1e12 for key, t in PEAK_TFLOPS if key in device_name), None)


def peak_flops(override_tflops: float | None) -> tuple[float | None, str]:
    """The peak MFU is measured against, and where it came from (or why there is none)."""
    if override_tflops is not None:
        return override_tflops * 1e12, "--peak-tflops"
    if not torch.cuda.is_available():
        return None, "no CUDA device: MFU is defined against a GPU's dense bf16 peak"
    name = torch.cuda.get_device_name()
    peak = dense_bf16_peak(name)
    if peak is None:
        return None, f"no dense bf16 peak known for {name!r}; pass --peak-tflops"
    return peak, f"datasheet dense bf16 peak of {name}"


def timed(loop: Callable[[int], None], steps: int, first: int) -> float:
    synchronize()
    started = time.perf_counter()
    for step in range(first, first + steps):
        loop(step)
    synchronize()
    return time.perf_counter() - started


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _task(shape: ModelShape, options: LoopOptions) -> SyntheticLMTask:
    batch = options.micro_batch * options.accumulation
    # Eight global batches of distinct sequences; the probe set is one eval batch.
    return SyntheticLMTask(
        shape, 8 * batch, options.micro_batch, options.activation_checkpointing, device()
    )


def _rates(
    seconds: float, tokens: int, n_params: int, shape: ModelShape, peak: float | None
) -> tuple[float, float | None]:
    rate = tokens / seconds
    return rate, None if peak is None else rate * flops_per_token(n_params, shape) / peak


def _common(shape: ModelShape, options: LoopOptions, n_params: int) -> dict[str, Any]:
    peak, peak_source = peak_flops(options.peak_tflops)
    return {
        "shape": asdict(shape),
        "params": n_params,
        "flops_per_token": flops_per_token(n_params, shape),
        "micro_batch": options.micro_batch,
        "accumulation": options.accumulation,
        "tokens_per_step": options.micro_batch * options.accumulation * shape.seq,
        "precision": options.precision,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "peak_tflops": None if peak is None else peak / 1e12,
        "peak_source": peak_source,
    }


def bench_deepspeed(shape: ModelShape, stage: int, options: LoopOptions) -> dict[str, Any]:
    """Plain and monitored loops alternating on one DeepSpeed engine (see the module docstring).
    Needs a process group (``single_process_group``); the caller frees the memory after."""
    from grokschedule.training.deepspeed.engine import DeepSpeedRun

    use_gpu = torch.cuda.is_available()
    batch = options.micro_batch * options.accumulation
    config = TrainerConfig(
        task="lm",
        num_workers=1,
        use_gpu=use_gpu,
        zero_stage=stage,
        precision=options.precision,
        batch_size=batch,
        micro_batch_size=options.micro_batch,
        lr=1e-4,
        weight_decay=0.1,
        grad_clip=1.0,
        activation_checkpointing=options.activation_checkpointing,
        fused_adam=options.fused_adam if use_gpu else None,
        eval_batch_size=options.micro_batch,
        max_steps=10**9,
        poll_every=options.poll_every,
    )
    try:
        run = DeepSpeedRun(config, _task(shape, options), device())
        try:
            result = _measure_engine(run, shape, options)
        finally:
            run.engine.destroy()
    finally:
        restore_torch_linear()
    result["zero_stage"] = stage
    return result


def restore_torch_linear() -> None:
    """Put torch's ``torch.nn.functional.linear`` back. A ZeRO-3 engine replaces it for the
    rest of the process (DeepSpeed 0.19.8: "This will persist unless manually reset") with an
    autograd.Function that ``torch.func.vmap`` under ``torch.compile`` cannot batch, which broke
    the curve bank's compiled step run after it in the same process."""
    from deepspeed.runtime.zero.partition_parameters import InsertPostInitMethodToModuleSubClasses

    original = getattr(InsertPostInitMethodToModuleSubClasses, "linear_bk", None)
    if original is not None:
        torch.nn.functional.linear = original


def _measure_engine(run: DeepSpeedRun, shape: ModelShape, options: LoopOptions) -> dict[str, Any]:
    from grokschedule.training.deepspeed.reporting import poll_commands, report_metrics

    # ZeRO-3 leaves each parameter a stub; ds_numel is its full size.
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in run.engine.module.parameters())

    def plain(step: int) -> None:
        plain_step(run, step)

    def monitored(step: int) -> None:
        monitored_step(run, options.poll_every, options.report_every)

    timed(plain, options.warmup, 0)
    timed(monitored, options.warmup, 0)
    reset_peak_memory()
    seconds = {"plain": 0.0, "monitored": 0.0}
    for r in range(options.rounds):
        first = options.warmup + r * options.steps
        seconds["plain"] += timed(plain, options.steps, first)
        seconds["monitored"] += timed(monitored, options.steps, first)
    memory, memory_source = peak_memory()
    # The parts of the difference, each timed alone once the loops are done.
    synchronize()
    started = time.perf_counter()
    report_metrics(run)
    synchronize()
    report_ms = 1e3 * (time.perf_counter() - started)
    started = time.perf_counter()
    poll_commands(no_commands, run.step)
    poll_ms = 1e3 * (time.perf_counter() - started)
    base = getattr(run.engine.optimizer, "optimizer", run.engine.optimizer)  # ZeRO wraps it

    steps = options.rounds * options.steps
    tokens = steps * options.micro_batch * options.accumulation * shape.seq
    result = _common(shape, options, n_params)
    peak = None if result["peak_tflops"] is None else result["peak_tflops"] * 1e12
    result.update(
        optimizer=type(base).__name__,
        peak_memory_gib=memory,
        peak_memory_source=memory_source,
        poll_every=options.poll_every,
        report_every=options.report_every,
        steps_timed=steps,
        report_ms=report_ms,
        poll_ms=poll_ms,
    )
    for name, s in seconds.items():
        rate, mfu = _rates(s, tokens, n_params, shape, peak)
        result[f"{name}_tokens_per_s"] = rate
        result[f"{name}_mfu"] = mfu
        result[f"{name}_step_ms"] = 1e3 * s / steps
    result["monitoring_overhead"] = 1.0 - seconds["plain"] / seconds["monitored"]
    return result


def bench_torch(shape: ModelShape, options: LoopOptions) -> dict[str, Any]:
    """The reference point without DeepSpeed: the same model, batches and loss, torch's AdamW
    (fused on CUDA) stepping the weights in the training dtype directly — no fp32 master copy,
    no ZeRO bookkeeping — and the same gradient clipping. The caller frees the memory after."""
    use_gpu = torch.cuda.is_available()
    task = _task(shape, options)
    torch.manual_seed(0)
    model = task.build_model()
    if options.precision == "bf16":
        model = model.to(torch.bfloat16)
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=0.1, fused=use_gpu or None
    )
    n_params = sum(p.numel() for p in model.parameters())
    x, y = task.train_split()
    micro, accumulation = options.micro_batch, options.accumulation
    here = device()

    def step(i: int) -> None:
        for m in range(accumulation):
            start = ((i * accumulation + m) * micro) % (len(x) - micro + 1)
            logits = model(input_ids=x[start : start + micro].to(here)).logits.float()
            targets = y[start : start + micro].to(here)
            loss = F.cross_entropy(logits.transpose(1, 2), targets) / accumulation
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    timed(step, options.warmup, 0)
    reset_peak_memory()
    seconds = sum(
        timed(step, options.steps, options.warmup + r * options.steps)
        for r in range(options.rounds)
    )
    memory, memory_source = peak_memory()
    steps = options.rounds * options.steps
    result = _common(shape, options, n_params)
    peak = None if result["peak_tflops"] is None else result["peak_tflops"] * 1e12
    rate, mfu = _rates(seconds, steps * micro * accumulation * shape.seq, n_params, shape, peak)
    result.update(
        optimizer="torch AdamW" + (" (fused)" if use_gpu else ""),
        peak_memory_gib=memory,
        peak_memory_source=memory_source,
        steps_timed=steps,
        tokens_per_s=rate,
        mfu=mfu,
        step_ms=1e3 * seconds / steps,
    )
    return result


def smaller(shape: ModelShape, micro_batch: int) -> tuple[ModelShape, int] | None:
    """The next, smaller try after an out-of-memory: half the micro-batch, then half the layers."""
    if micro_batch > 1:
        return shape, micro_batch // 2
    if shape.layers > 1:
        return replace(shape, layers=shape.layers // 2), micro_batch
    return None


def fit_to_memory(
    attempt: Callable[[ModelShape, int], dict[str, Any]], shape: ModelShape, micro_batch: int
) -> dict[str, Any]:
    """``attempt(shape, micro_batch)``, retried smaller (``smaller``) while CUDA runs out of
    memory; the result records what was used and every try that did not fit."""
    tried: list[dict[str, Any]] = []
    while True:
        error = None
        try:
            result = attempt(shape, micro_batch)
        except torch.cuda.OutOfMemoryError as oom:
            error = f"{type(oom).__name__}: {str(oom).splitlines()[0] if str(oom) else ''}"
        # Outside the except block, so the traceback and the tensors its frames held are gone;
        # then whatever the attempt left in the caching allocator goes back.
        release_memory()
        if error is None:
            result["out_of_memory_tries"] = tried
            result["fell_back"] = bool(tried)
            return result
        tried.append({"layers": shape.layers, "micro_batch": micro_batch, "error": error})
        next_try = smaller(shape, micro_batch)
        if next_try is None:
            raise RuntimeError(f"out of memory even at 1 layer and micro-batch 1: {tried}")
        shape, micro_batch = next_try


@contextmanager
def single_process_group() -> Iterator[None]:
    """A one-rank process group, as DeepSpeed expects, if nothing set one up; torn down (and the
    environment put back) afterwards if it was ours."""
    if dist.is_initialized():
        yield
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    values = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0",
              "LOCAL_RANK": "0", "WORLD_SIZE": "1"}  # fmt: skip
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def fused_adam_build() -> tuple[bool, str]:
    """JIT-build (or load the cached build of) DeepSpeed's FusedAdam: whether it worked, and the
    time taken or the error. Done before an engine is built so a failed build (no nvcc, an arch
    list the builder cannot parse) is told apart from a failure of the run itself."""
    started = time.perf_counter()
    try:
        from deepspeed.ops.op_builder import FusedAdamBuilder

        FusedAdamBuilder().load()
    except Exception as error:  # whatever the build raises: recorded, torch's AdamW used instead
        return False, f"{type(error).__name__}: {error}"[:500]
    return True, f"built or loaded in {time.perf_counter() - started:.1f} s"


def bench_stage(shape: ModelShape, stage: int, options: LoopOptions) -> dict[str, Any]:
    """``bench_deepspeed`` fitted to memory. With ``fused_adam`` None on CUDA, FusedAdam is built
    first and, if that fails, torch's AdamW is used and the failure recorded."""
    fused_note = None
    if torch.cuda.is_available() and options.fused_adam is None:
        built, fused_note = fused_adam_build()
        options = replace(options, fused_adam=built)

    def attempt(s: ModelShape, micro: int) -> dict[str, Any]:
        return bench_deepspeed(s, stage, replace(options, micro_batch=micro))

    result = fit_to_memory(attempt, shape, options.micro_batch)
    if fused_note is not None:
        result["fused_adam_build"] = fused_note
    return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="grokschedule.bench.trainer", description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="a 0.1M-param model (CPU, tests)")
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 3], choices=[2, 3])
    parser.add_argument("--precision", choices=["bf16", "fp32"], default=None)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--seq", type=int, default=None, help="sequence length (default 2048)")
    parser.add_argument("--steps", type=int, default=10, help="steps per loop per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--monitor-every", type=int, default=10, help="steps between reports")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    try:
        args.options = LoopOptions(
            precision=args.precision or ("bf16" if torch.cuda.is_available() else "fp32"),
            micro_batch=args.micro_batch,
            accumulation=args.accumulation,
            steps=args.steps,
            rounds=args.rounds,
            warmup=args.warmup,
            poll_every=args.monitor_every,
            report_every=args.monitor_every,
            activation_checkpointing=args.activation_checkpointing,
            peak_tflops=args.peak_tflops,
        )
        shape = TINY if args.tiny else LLAMA_1B
        args.shape = shape if args.seq is None else replace(shape, seq=args.seq)
    except ValueError as error:
        parser.error(str(error))
    return args


def describe(r: dict[str, Any]) -> str:
    """One line per DeepSpeed result, for the console."""
    mfu = "" if r["plain_mfu"] is None else f", MFU {r['plain_mfu']:.2f}/{r['monitored_mfu']:.2f}"
    return (
        f"ZeRO-{r['zero_stage']} {r['precision']} {r['params'] / 1e6:,.1f}M params, "
        f"micro-batch {r['micro_batch']} on {r['device']}: "
        f"{r['plain_tokens_per_s']:,.0f} tokens/s plain, {r['monitored_tokens_per_s']:,.0f} "
        f"monitored ({100 * r['monitoring_overhead']:+.1f}%){mfu}, "
        f"peak {r['peak_memory_gib']:.1f} GiB"
    )


def trainer_bench_main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark; returns one result per ZeRO stage (also printed, and written to
    ``--out``)."""
    args = parse_args(argv)
    if torch.cuda.is_available():
        prepare_cuda_build_env()
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    with single_process_group():
        results = [bench_stage(args.shape, stage, args.options) for stage in args.stages]
    for r in results:
        print(describe(r))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    trainer_bench_main()
