"""One GPU benchmark sized for a short device loan: ``grokschedule bench gpu``.

    grokschedule bench gpu --out bench_gpu.json        # one H100/H200: ~6 min estimated
    grokschedule bench gpu --tiny --out tiny.json      # the same code on a CPU, well under a minute

Sections, each time-boxed, in this order (``--sections`` picks some), into one JSON file:

- ``env``: versions, the device, the dense bf16 peak MFU is taken against (``PEAK_TFLOPS``), and
  a measured bf16 matmul rate (GPU only);
- ``trainer.zero2``, ``trainer.zero3``: the DeepSpeed trainer on a Llama-style causal LM built
  from a config in code (0.95B parameters, seq 2048, bf16, random tokens): tokens/s, MFU, peak
  memory, and the same loop with grokschedule's reporting, probe-set evaluation and control
  polling switched off, on the same engine, so the monitoring overhead is a ratio
  (``bench.trainer``, where the FLOP count is stated). A CUDA out-of-memory retries with half the
  micro-batch, then half the layers, and records what was used;
- ``trainer.torch``: the same model, batches and loss in plain PyTorch (no DeepSpeed);
- ``bank.{eager,compiled}.{tf32,fp32}``: the curve bank's batched step (``bench.bank_models``)
  for a chunk of 256 MLPs at p = 97, hidden 512, in µs per model-step, eager and through
  ``torch.compile``; TF32 is a CUDA matmul mode, so those two are skipped on a CPU;
- ``probes``: each in-training probe's cost per call (``training.probes``) at that model size.

A section that fails or runs past its budget (``--timeout NAME=SECONDS``; SIGALRM in the process
that runs it) records ``status: error`` and the next one runs; ``--budget-s`` bounds the whole
run, and sections it leaves no time for are ``skipped``. With ``--isolate`` (the default on CUDA)
each section runs in its own process, so a hung collective or a poisoned CUDA context costs only
that section, each starts with the GPU's memory empty, and a process deaf to SIGALRM is killed
15 s after its budget. The JSON is rewritten after every section, so a killed run keeps what it
had. Targets (in ``targets`` and the table): MFU ≥ 0.45 for ZeRO-2 bf16 at ~1B, overhead ≤ 1 %,
bank ≤ 20 µs per model-step; they are judged only on a full-size GPU run.

Nothing here imports Ray or MLflow; DeepSpeed and transformers are imported by the sections that
use them, so the rest still runs where they are missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from grokschedule.bench.bank_models import ModelBatch, flush_denormals
from grokschedule.bench.trainer import (
    LLAMA_1B,
    TINY,
    LoopOptions,
    ModelShape,
    bench_stage,
    bench_torch,
    fit_to_memory,
    peak_flops,
    peak_memory,
    reset_peak_memory,
    single_process_group,
    synchronize,
)
from grokschedule.training.deepspeed.config import prepare_cuda_build_env
from grokschedule.training.modular.task import ModularTask, build_model
from grokschedule.training.modular.trainer import make_optimizer
from grokschedule.training.probes import ModelProbes

TARGET_MFU = 0.45  # ZeRO-2 bf16, ~1B
TARGET_OVERHEAD = 0.01
TARGET_BANK_US = 20.0
GRACE_S = 15.0  # after its budget, an isolated section's process is killed
MIN_SECTION_S = 5.0  # less total budget left than this: the section is skipped


class Skipped(Exception):
    """A section, or part of one, that does not apply here (a GPU-only measurement on a CPU)."""


class SectionTimeout(BaseException):
    """A section ran past its budget. A BaseException, so no ``except Exception`` inside the
    section (DeepSpeed's, or a fallback's) can swallow it."""


@dataclass(frozen=True)
class BankSetup:
    p: int
    embed_dim: int
    hidden_dim: int
    models: int
    warmup: int  # calls before timing: torch.compile compiles, then recompiles once (Adam's t)
    steps: int  # per timed window
    repeats: int  # windows; the median is reported
    backend: str  # torch.compile's
    train_fraction: float = 0.5


@dataclass(frozen=True)
class ProbeSetup:
    archs: tuple[str, ...]
    p: int
    embed_dim: int
    hidden_dim: int
    repeats: int


@dataclass(frozen=True)
class Plan:
    """Everything a run does, resolved from the command line and checked before any compute."""

    tiny: bool
    shape: ModelShape
    loop: LoopOptions
    bank: BankSetup
    probes: ProbeSetup
    sections: tuple[str, ...]
    budget_s: float
    timeouts: dict[str, float] = field(default_factory=dict)
    isolate: bool = False

    def timeout(self, name: str) -> float:
        budgets = TINY_BUDGETS if self.tiny else BUDGETS
        return self.timeouts.get(name, budgets[name])


def on_cuda() -> bool:
    return torch.cuda.is_available()


def here() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if on_cuda() else torch.device("cpu")


# -- sections ---------------------------------------------------------------------------------
def _version(module: str) -> str:
    """The module's version if it imports, else why not: on the device machine, whether the
    carried wheels are complete."""
    try:
        return str(__import__(module).__version__)
    except Exception as error:  # any import failure is the finding
        return f"not importable: {type(error).__name__}: {error}"[:300]


def _origin(module: str) -> str | None:
    """Where the module would be imported from (the carried wheels' folder, on the device)."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    return None if spec is None or spec.origin is None else str(Path(spec.origin).parent)


def matmul_bf16_tflops(size: int = 8192, repeats: int = 10) -> float:
    """The bf16 matmul rate this GPU reaches through torch on random data (zeros run faster),
    median of ``repeats`` timed products after three warm-ups: the ceiling beside the
    datasheet's."""
    a = torch.randn(size, size, device=here(), dtype=torch.bfloat16)
    b = torch.randn(size, size, device=here(), dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(float(start.elapsed_time(end)) / 1e3)
    return 2 * size**3 / statistics.median(times) / 1e12


def env_section(plan: Plan) -> dict[str, Any]:
    peak, peak_source = peak_flops(plan.loop.peak_tflops)
    result: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "deepspeed": _version("deepspeed"),
        "deepspeed_from": _origin("deepspeed"),
        "transformers": _version("transformers"),
        "device": torch.cuda.get_device_name() if on_cuda() else "cpu",
        "cpu_threads": torch.get_num_threads(),
        "peak_tflops": None if peak is None else peak / 1e12,
        "peak_source": peak_source,
    }
    if on_cuda():
        properties = torch.cuda.get_device_properties(torch.cuda.current_device())
        result.update(
            capability=f"{properties.major}.{properties.minor}",
            memory_gib=properties.total_memory / 2**30,
            multiprocessors=properties.multi_processor_count,
            bf16_supported=torch.cuda.is_bf16_supported(),
            matmul_bf16_tflops=matmul_bf16_tflops(),
        )
    else:
        result["matmul_bf16_tflops"] = {"status": "skipped", "reason": "GPU-only"}
    return result


def _cpu_notes(plan: Plan) -> dict[str, str]:
    if on_cuda():
        return {}
    return {
        "cpu_note": (
            f"CPU rehearsal: precision {plan.loop.precision} (bf16 is the GPU figure; DeepSpeed "
            "runs fp32 here by default), peak memory is the process's RSS, MFU is null"
        )
    }


def trainer_section(plan: Plan, stage: int) -> dict[str, Any]:
    """Needs the process group ``process_group_for`` sets up around the sections."""
    return {**bench_stage(plan.shape, stage, plan.loop), **_cpu_notes(plan)}


def torch_section(plan: Plan) -> dict[str, Any]:
    def attempt(shape: ModelShape, micro: int) -> dict[str, Any]:
        return bench_torch(shape, replace(plan.loop, micro_batch=micro))

    return {**fit_to_memory(attempt, plan.shape, plan.loop.micro_batch), **_cpu_notes(plan)}


@contextmanager
def float32_matmul_precision(precision: str) -> Iterator[None]:
    """``tf32``: let float32 matmuls use TF32 tensor cores ("high"); ``fp32``: full float32."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def bank_section(plan: Plan, compiled: bool, precision: str) -> dict[str, Any]:
    """µs per model-step of ``ModelBatch.step`` — the loop ``bench.bank_chunks.train_chunk``
    runs — for one chunk: same task and shapes, the hyperparameters varying as a grid's do."""
    if precision == "tf32" and not on_cuda():
        raise Skipped("TF32 is a CUDA tensor-core mode: a CPU computes float32 (bank.*.fp32)")
    b = plan.bank
    x, y, _, _ = (t.to(here()) for t in ModularTask("add", b.p, b.train_fraction, 0).split())
    n = b.models
    batch = ModelBatch.create(
        "mlp",
        b.p,
        b.embed_dim,
        b.hidden_dim,
        seeds=[0] * n,
        init_scales=[(1.0, 2.0)[i % 2] for i in range(n)],
        optimizer="adamw",
        lrs=[(1e-3, 3e-3)[i // 2 % 2] for i in range(n)],
        weight_decays=[(0.0, 0.1, 1.0)[i // 4 % 3] for i in range(n)],
        device=here(),
    )
    if compiled:
        torch._dynamo.reset()  # an earlier compiled section's graphs do not count here
        # Forward and backward, where the FLOPs are; the batched AdamW stays eager: its step
        # count is a Python int the graph would be specialized on and recompiled for.
        loss_and_grads = torch.compile(batch.loss_and_grads, backend=b.backend)

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            grads = loss_and_grads(x, y)[1]
            with torch.no_grad():
                batch.optimizer.step_(batch.params, grads)

    else:
        step = batch.step
    with float32_matmul_precision(precision), flush_denormals():
        synchronize()
        started = time.perf_counter()
        for _ in range(b.warmup):
            step(x, y)
        synchronize()
        warmup_s = time.perf_counter() - started
        reset_peak_memory()
        windows = []
        for _ in range(b.repeats):
            started = time.perf_counter()
            for _ in range(b.steps):
                step(x, y)
            synchronize()
            windows.append(time.perf_counter() - started)
    memory, memory_source = peak_memory()
    median = statistics.median(windows)
    # Forward + backward ≈ 3 forwards; 2 FLOPs per multiply-add of the two Linear layers.
    flops = 6.0 * len(x) * (2 * b.embed_dim * b.hidden_dim + b.hidden_dim * b.p)
    us = 1e6 * median / (b.steps * n)
    return {
        "arch": "mlp",
        "p": b.p,
        "embed_dim": b.embed_dim,
        "hidden_dim": b.hidden_dim,
        "models": n,
        "train_examples": len(x),
        "mode": "compiled" if compiled else "eager",
        "backend": b.backend if compiled else None,
        "compiled": "ModelBatch.loss_and_grads" if compiled else None,
        "precision": precision,
        "us_per_model_step": us,
        "ms_per_chunk_step": 1e3 * median / b.steps,
        "windows_s": windows,
        "steps_per_window": b.steps,
        "warmup_s": warmup_s,
        "matmul_tflops": flops * n * b.steps / median / 1e12,
        "peak_memory_gib": memory,
        "peak_memory_source": memory_source,
    }


def per_call_ms(call: Callable[[], object], repeats: int) -> float:
    """Median wall time of one call, synchronized on both sides, after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        synchronize()
        started = time.perf_counter()
        call()
        synchronize()
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def probe_costs(arch: str, setup: ProbeSetup, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Each probe of ``ModelProbes`` per call on one model, next to one full-batch training step
    of it (the modular trainer's: AdamW, lr 3e-3, weight decay 1)."""
    torch.manual_seed(0)
    model = build_model(arch, setup.p, setup.embed_dim, setup.hidden_dim, 1.0).to(here())
    optimizer = make_optimizer("adamw", model.parameters(), 3e-3, 1.0)
    probes = ModelProbes(model, x, every=1, budget=1.0)
    params = list(model.parameters())

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    for _ in range(3):  # gradients and Adam state exist, as they do mid-run
        train_step()
    repeats = setup.repeats
    costs = {
        "weight_spectra": per_call_ms(probes.weight_metrics, repeats),
        "forward_probes": per_call_ms(probes.forward_metrics, repeats),
        "slow_grad_ema": per_call_ms(lambda: probes.slow_grad.update(params), repeats),
        "slow_grad_share": per_call_ms(
            lambda: probes.slow_grad.update(params, measure=True), repeats
        ),
        "all_probes": per_call_ms(probes.measure, repeats),
    }
    step_ms = per_call_ms(train_step, repeats)
    return {
        "params": sum(p.numel() for p in params),
        "train_step_ms": step_ms,
        "ms_per_call": costs,
        "share_of_a_step": {name: ms / step_ms for name, ms in costs.items()},
    }


def probes_section(plan: Plan) -> dict[str, Any]:
    s = plan.probes
    x, y, _, _ = (t.to(here()) for t in ModularTask("add", s.p, 0.5, 0).split())
    result: dict[str, Any] = {"p": s.p, "embed_dim": s.embed_dim, "hidden_dim": s.hidden_dim}
    for arch in s.archs:
        result[arch] = probe_costs(arch, s, x, y)
    return result


SECTIONS: dict[str, Callable[[Plan], dict[str, Any]]] = {
    "env": env_section,
    "trainer.zero2": partial(trainer_section, stage=2),
    "trainer.zero3": partial(trainer_section, stage=3),
    "bank.eager.tf32": partial(bank_section, compiled=False, precision="tf32"),
    "bank.compiled.tf32": partial(bank_section, compiled=True, precision="tf32"),
    "probes": probes_section,
    "trainer.torch": torch_section,
    "bank.eager.fp32": partial(bank_section, compiled=False, precision="fp32"),
    "bank.compiled.fp32": partial(bank_section, compiled=True, precision="fp32"),
}
# Seconds each may take on one H100/H200 (ZeRO-2 includes FusedAdam's first JIT build), and in
# the --tiny rehearsal on a busy 2-core CPU. Their sum exceeds --budget-s on purpose: expected
# times are well under these, and --budget-s is what bounds the run.
BUDGETS = {
    "env": 60.0,
    "trainer.zero2": 210.0,
    "trainer.zero3": 120.0,
    "bank.eager.tf32": 40.0,
    "bank.compiled.tf32": 120.0,
    "probes": 60.0,
    "trainer.torch": 60.0,
    "bank.eager.fp32": 40.0,
    "bank.compiled.fp32": 90.0,
}
TINY_BUDGETS = dict.fromkeys(SECTIONS, 90.0)


# -- running sections -------------------------------------------------------------------------
@contextmanager
def time_box(seconds: float) -> Iterator[None]:
    """Raise ``SectionTimeout`` in this (main) thread once ``seconds`` have passed."""

    def expire(signum: int, frame: object) -> None:
        raise SectionTimeout(f"ran past its {seconds:g} s budget")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def process_group_for(sections: Sequence[str]) -> AbstractContextManager[None]:
    """One process group for every DeepSpeed section this process runs: DeepSpeed keeps the
    first group it saw, so a group torn down and made anew between engines is refused."""
    uses_deepspeed = any(name.startswith("trainer.zero") for name in sections)
    return single_process_group() if uses_deepspeed else nullcontext()


def run_section(
    run: Callable[[Plan], dict[str, Any]], plan: Plan, seconds: float
) -> dict[str, Any]:
    """One section in this process: its result with ``status`` ok, skipped or error, and the
    seconds it took."""
    started = time.perf_counter()
    if on_cuda():
        torch.cuda.set_device(0)
    try:
        with time_box(seconds):
            result = {"status": "ok", **run(plan)}
    except Skipped as skip:
        result = {"status": "skipped", "reason": str(skip)}
    except SectionTimeout as timeout:
        result = {"status": "error", "error": str(timeout)}
    except Exception as error:  # recorded; the next section still runs
        result = {
            "status": "error",
            "error": f"{type(error).__name__}: {error}"[:2000],
            "traceback": traceback.format_exc()[-4000:],
        }
    result["seconds"] = time.perf_counter() - started
    return result


def run_isolated(name: str, argv: Sequence[str], seconds: float) -> dict[str, Any]:
    """One section in a fresh process of this module (same arguments); its output is echoed
    here afterwards. Killed, with its whole process group, ``GRACE_S`` after its budget."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="grokschedule-bench-gpu-") as tmp:
        out, log = Path(tmp) / "section.json", Path(tmp) / "section.log"
        command = [sys.executable, "-m", "grokschedule.bench.gpu", *argv, "--section", name]
        command += ["--section-out", str(out), "--section-budget", str(seconds)]
        with log.open("w") as sink:
            child = subprocess.Popen(
                command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
            code: int | None = None
            try:
                code = child.wait(timeout=seconds + GRACE_S)
            except subprocess.TimeoutExpired:
                pass
            finally:  # also on Ctrl-C here: no section left running on the GPU
                if code is None:
                    with suppress(ProcessLookupError):  # it may have just ended
                        os.killpg(child.pid, signal.SIGKILL)
                    child.wait()
        text = log.read_text(errors="replace")
        print(f"----- {name} (own process) -----\n{text.rstrip()}\n----- end of {name} -----")
        if out.exists():
            result: dict[str, Any] = json.loads(out.read_text())
        elif code is None:
            result = {
                "status": "error",
                "error": f"killed {GRACE_S:g} s after its {seconds:g} s budget",
            }
        else:
            result = {
                "status": "error",
                "error": f"its process exited with code {code} and wrote no result",
            }
        if result["status"] == "error":
            result["log_tail"] = text[-3000:]
    result["seconds"] = time.perf_counter() - started
    return result


# -- the report -------------------------------------------------------------------------------
def _ok(report: dict[str, Any], name: str) -> dict[str, Any] | None:
    section = report["sections"].get(name)
    return section if section is not None and section["status"] == "ok" else None


def targets(report: dict[str, Any], judged: bool) -> dict[str, Any]:
    """Each target with the value measured; ``met`` only on a full-size GPU run (else None)."""
    zero2 = _ok(report, "trainer.zero2")
    overheads = [
        s["monitoring_overhead"]
        for name in ("trainer.zero2", "trainer.zero3")
        if (s := _ok(report, name)) is not None
    ]
    banks = [
        s["us_per_model_step"]
        for name in report["sections"]
        if name.startswith("bank.") and (s := _ok(report, name)) is not None
    ]
    values = {
        "mfu_zero2_bf16": (
            zero2["plain_mfu"] if zero2 and zero2["precision"] == "bf16" else None,
            TARGET_MFU,
            ">=",
        ),
        "monitoring_overhead": (max(overheads) if overheads else None, TARGET_OVERHEAD, "<="),
        "bank_us_per_model_step": (min(banks) if banks else None, TARGET_BANK_US, "<="),
    }
    out = {}
    for name, (value, target, sense) in values.items():
        met = None
        if judged and value is not None:
            met = value >= target if sense == ">=" else value <= target
        out[name] = {"value": value, "target": target, "sense": sense, "met": met}
    return out


def _summary(name: str, s: dict[str, Any]) -> str:
    if s["status"] == "skipped":
        return f"skipped: {s['reason']}"
    if s["status"] == "error":
        return str(s["error"]).splitlines()[0][:110]
    if name == "env":
        rate = s["matmul_bf16_tflops"]
        measured = f"{rate:.0f} TFLOP/s" if isinstance(rate, float) else "GPU-only"
        return (
            f"{s['device']}; torch {s['torch']}, DeepSpeed {s['deepspeed'][:40]}; "
            f"bf16 matmul {measured}, datasheet {s['peak_tflops'] or '—'}"
        )
    if name == "trainer.torch":
        mfu = "—" if s["mfu"] is None else f"{s['mfu']:.3f}"
        return (
            f"{s['tokens_per_s']:,.0f} tok/s, MFU {mfu}, peak {s['peak_memory_gib']:.1f} GiB, "
            f"micro-batch {s['micro_batch']}, {s['shape']['layers']} layers"
        )
    if name.startswith("trainer."):
        mfu = "—" if s["plain_mfu"] is None else f"{s['plain_mfu']:.3f}"
        return (
            f"{s['plain_tokens_per_s']:,.0f} tok/s, MFU {mfu}, overhead "
            f"{100 * s['monitoring_overhead']:+.2f} %, peak {s['peak_memory_gib']:.1f} GiB, "
            f"micro-batch {s['micro_batch']}, {s['shape']['layers']} layers, {s['optimizer']}"
        )
    if name.startswith("bank."):
        backend = f", {s['backend']}, warm-up {s['warmup_s']:.0f} s" if s["backend"] else ""
        return (
            f"{s['us_per_model_step']:.2f} µs/model-step ({s['models']} models, p={s['p']}, "
            f"hidden {s['hidden_dim']}{backend})"
        )
    parts = []
    for arch in (a for a in s if isinstance(s[a], dict)):
        costs = s[arch]["ms_per_call"]
        parts.append(
            f"{arch}: all {costs['all_probes']:.2f} ms (spectra {costs['weight_spectra']:.2f}, "
            f"forward {costs['forward_probes']:.2f}, EMA {costs['slow_grad_ema']:.3f}) vs step "
            f"{s[arch]['train_step_ms']:.2f} ms"
        )
    return "; ".join(parts)


def table(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [
        f"grokschedule bench gpu{' --tiny' if meta['tiny'] else ''} on {meta['device']}: "
        f"{meta['params_label']}, {meta['wall_s']:.0f} s of a {meta['budget_s']:g} s budget",
        f"{'section':<20} {'status':<8} result",
    ]
    for name, s in report["sections"].items():
        lines.append(f"{name:<20} {s['status']:<8} {_summary(name, s)}")
    marks = {True: "met", False: "MISSED", None: "not judged"}
    judged = []
    for name, t in report["targets"].items():
        value = "—" if t["value"] is None else f"{t['value']:.4g}"
        judged.append(f"{name} {value} ({t['sense']} {t['target']:g}: {marks[t['met']]})")
    lines.append(f"targets: {', '.join(judged)}")
    if not meta["judged"]:
        lines.append("(targets are judged on a full-size GPU run only; this is a rehearsal)")
    return "\n".join(lines)


def write(report: dict[str, Any], path: Path) -> None:
    """Atomically, so a run killed mid-write still leaves the previous complete file."""
    partial_path = path.with_name(path.name + ".partial")
    partial_path.write_text(json.dumps(report, indent=1))
    os.replace(partial_path, path)


# -- command line -----------------------------------------------------------------------------
def _timeouts(values: Sequence[str]) -> dict[str, float]:
    out = {}
    for value in values:
        name, _, seconds = value.partition("=")
        if name not in SECTIONS:
            raise ValueError(
                f"--timeout {value!r}: no section {name!r}; sections: {list(SECTIONS)}"
            )
        try:
            out[name] = float(seconds)
        except ValueError:
            raise ValueError(f"--timeout {value!r}: seconds must be a number") from None
        if not out[name] > 0:
            raise ValueError(f"--timeout {value!r}: seconds must be > 0")
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grokschedule bench gpu", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--tiny", action="store_true", help="tiny shapes, few steps (CPU rehearsal)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench_gpu.json"))
    parser.add_argument("--sections", nargs="+", default=None, help=f"of {list(SECTIONS)}")
    parser.add_argument("--budget-s", type=float, default=None, help="whole run (450; tiny 300)")
    parser.add_argument(
        "--timeout", action="append", default=[], metavar="SECTION=SECONDS",
        help="a section's own budget (defaults in BUDGETS)",
    )  # fmt: skip
    parser.add_argument(
        "--isolate", action=argparse.BooleanOptionalAction, default=None,
        help="each section in its own process (default: on CUDA)",
    )  # fmt: skip
    parser.add_argument("--precision", choices=["bf16", "fp32"], default=None)
    parser.add_argument("--micro-batch", type=int, default=None, help="first try (8; tiny 4)")
    parser.add_argument("--layers", type=int, default=None, help="override the model's 16")
    parser.add_argument("--seq", type=int, default=None, help="sequence length (2048)")
    parser.add_argument("--steps", type=int, default=None, help="per loop per round (20)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--report-every", type=int, default=None)
    parser.add_argument(
        "--torch-adam", action="store_true",
        help="DeepSpeed with torch's AdamW: skip FusedAdam's JIT build (a minute or two)",
    )  # fmt: skip
    parser.add_argument("--peak-tflops", type=float, default=None, help="for an unlisted GPU")
    parser.add_argument("--bank-models", type=int, default=None, help="models per chunk (256)")
    parser.add_argument("--compile-backend", default=None, help="inductor; tiny on CPU aot_eager")
    # Internal: how run_isolated starts one section in its own process.
    parser.add_argument("--section", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--section-out", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--section-budget", type=float, default=None, help=argparse.SUPPRESS)
    return parser


def make_plan(args: argparse.Namespace) -> Plan:
    """The run ``args`` ask for; ValueError naming the option for anything out of range."""
    tiny, cuda = args.tiny, on_cuda()
    shape = TINY if tiny else LLAMA_1B
    for name in ("layers", "seq"):
        if getattr(args, name) is not None:
            shape = replace(shape, **{name: getattr(args, name)})
    defaults = (
        {"micro_batch": 4, "steps": 2, "rounds": 2, "warmup": 1, "poll_every": 1, "report_every": 2}
        if tiny
        else {"micro_batch": 8, "steps": 20, "rounds": 3, "warmup": 3, "poll_every": 10,
              "report_every": 20}
    )  # fmt: skip
    given = {
        "micro_batch": args.micro_batch,
        "steps": args.steps,
        "rounds": args.rounds,
        "report_every": args.report_every,
    }
    loop = LoopOptions(
        precision=args.precision or ("bf16" if cuda else "fp32"),
        peak_tflops=args.peak_tflops,
        fused_adam=False if args.torch_adam else None,
        **{**defaults, **{k: v for k, v in given.items() if v is not None}},
    )
    backend = args.compile_backend or ("aot_eager" if tiny and not cuda else "inductor")
    models = args.bank_models if args.bank_models is not None else (8 if tiny else 256)
    if tiny:
        bank = BankSetup(23, 32, 64, models, 3, 3, 3, backend)
        probes = ProbeSetup(("mlp", "transformer"), 23, 32, 64, 3)
    else:
        bank = BankSetup(97, 128, 512, models, 3, 20, 5, backend)
        probes = ProbeSetup(("mlp", "transformer"), 97, 128, 512, 20)
    if bank.models <= 0:
        raise ValueError(f"--bank-models must be > 0, got {bank.models}")
    sections = tuple(args.sections or SECTIONS)
    unknown = [name for name in sections if name not in SECTIONS]
    if unknown:
        raise ValueError(f"--sections: no section {unknown}; sections: {list(SECTIONS)}")
    budget = args.budget_s if args.budget_s is not None else (300.0 if tiny else 450.0)
    if not budget > 0:
        raise ValueError(f"--budget-s must be > 0, got {budget}")
    return Plan(
        tiny=tiny,
        shape=shape,
        loop=loop,
        bank=bank,
        probes=probes,
        sections=tuple(name for name in SECTIONS if name in sections),
        budget_s=budget,
        timeouts=_timeouts(args.timeout),
        isolate=cuda if args.isolate is None else args.isolate,
    )


def _arch_list() -> dict[str, str | None]:
    """Apply ``prepare_cuda_build_env`` (DeepSpeed 0.19.8's JIT builder parses each
    ``TORCH_CUDA_ARCH_LIST`` entry with ``int()`` and fails on ``9.0a``): what was given, what
    the sections see. Unset stays unset: DeepSpeed then asks the device (``9.0``) itself."""
    given = os.environ.get("TORCH_CUDA_ARCH_LIST")
    note = None
    try:
        prepare_cuda_build_env()
    except ValueError as error:  # left as it was; FusedAdam's build will fail and say so
        note = str(error)
    return {"given": given, "used": os.environ.get("TORCH_CUDA_ARCH_LIST"), "error": note}


def _record(
    report: dict[str, Any], name: str, result: dict[str, Any], wall_s: float, out: Path
) -> None:
    report["sections"][name] = result
    if isinstance(result.get("device"), str):
        report["meta"]["device"] = result["device"]
    report["meta"]["wall_s"] = wall_s
    write(report, out)
    print(f"[bench gpu] {name}: {result['status']} in {result.get('seconds', 0):.1f} s")


def gpu_bench_main(argv: Sequence[str] | None = None) -> int:
    """Run the sections the arguments ask for; 0 if none failed, 1 if one did."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        plan = make_plan(args)
    except ValueError as error:
        parser.error(str(error))
    if args.section is not None:  # one section, in the process run_isolated started
        budget = args.section_budget or plan.timeout(args.section)
        with process_group_for([args.section]):
            result = run_section(SECTIONS[args.section], plan, budget)
        args.section_out.write_text(json.dumps(result))
        return 0
    started = time.perf_counter()
    arch_list = _arch_list()
    shape = plan.shape
    report: dict[str, Any] = {
        "meta": {
            "command": ["grokschedule", "bench", "gpu", *argv],
            "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "tiny": plan.tiny,
            "device": "cuda" if on_cuda() else "cpu",  # the name, once a section has read it
            "judged": on_cuda() and not plan.tiny,
            "isolate": plan.isolate,
            "budget_s": plan.budget_s,
            "wall_s": 0.0,
            "torch_cuda_arch_list": arch_list,
            "params_label": (
                f"Llama {shape.layers}×{shape.hidden}, seq {shape.seq}, {plan.loop.precision}"
            ),
            "plan": asdict(plan),
        },
        "sections": {},
        "targets": {},
    }
    write(report, args.out)
    with nullcontext() if plan.isolate else process_group_for(plan.sections):
        for name in plan.sections:
            left = plan.budget_s - (time.perf_counter() - started)
            if left < MIN_SECTION_S:
                result = {"status": "skipped", "reason": f"--budget-s {plan.budget_s:g} was spent"}
            elif plan.isolate:
                result = run_isolated(name, argv, min(plan.timeout(name), left))
            else:
                result = run_section(SECTIONS[name], plan, min(plan.timeout(name), left))
            _record(report, name, result, time.perf_counter() - started, args.out)
    report["targets"] = targets(report, report["meta"]["judged"])
    report["meta"]["wall_s"] = time.perf_counter() - started
    write(report, args.out)
    print(table(report))
    print(f"wrote {args.out}")
    return int(any(s["status"] == "error" for s in report["sections"].values()))


if __name__ == "__main__":
    raise SystemExit(gpu_bench_main())
