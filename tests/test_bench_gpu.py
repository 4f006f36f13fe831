"""`grokschedule bench gpu`: the --tiny rehearsal runs every section on a CPU with Ray and MLflow
unimportable, GPU-only pieces say so instead of making numbers up, and a section that fails or
runs past its budget is recorded while the others still run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from grokschedule.bench.gpu import (
    SECTIONS,
    Skipped,
    _parser,
    gpu_bench_main,
    make_plan,
    run_section,
)
from grokschedule.bench.trainer import (
    LLAMA_1B,
    TINY,
    dense_bf16_peak,
    fit_to_memory,
    flops_per_token,
)

ROOT = Path(__file__).resolve().parents[1]
# The bench as the device machine has it: no Ray, no MLflow (importing either raises).
WITHOUT_RAY = (
    "import sys; sys.modules.update(ray=None, mlflow=None); "
    "from grokschedule.cli import main; raise SystemExit(main(sys.argv[1:]))"
)
# LlamaForCausalLM(TINY), counted by hand: embeddings and the untied head 2·V·h, per layer the
# q/k/v/o projections 4h², the gated MLP 3·h·I and two RMSNorms 2h, and the final norm h.
TINY_PARAMS = 2 * 256 * 64 + 2 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64


def bench(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",  # the CPU rehearsal, also where a GPU is present
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-c", WITHOUT_RAY, "bench", "gpu", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def positive(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_tiny_rehearsal_runs_every_section_on_cpu_without_ray(tmp_path: Path) -> None:
    out = tmp_path / "bench_gpu.json"
    done = bench(["--tiny", "--out", str(out)])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    sections = report["sections"]
    assert list(sections) == list(SECTIONS)
    assert report["meta"]["tiny"] and report["meta"]["device"] == "cpu"
    assert not report["meta"]["judged"] and not report["meta"]["isolate"]

    env = sections["env"]
    assert env["status"] == "ok" and env["deepspeed"][0].isdigit()
    assert env["matmul_bf16_tflops"] == {"status": "skipped", "reason": "GPU-only"}
    assert env["peak_tflops"] is None and "no CUDA" in env["peak_source"]

    for stage in (2, 3):
        r = sections[f"trainer.zero{stage}"]
        assert r["status"] == "ok" and r["zero_stage"] == stage, r
        assert r["params"] == TINY_PARAMS and r["precision"] == "fp32" and "cpu_note" in r
        assert positive(r["plain_tokens_per_s"]) and positive(r["monitored_tokens_per_s"])
        # A ratio of two timings on a tiny CPU run is load noise: check that it is the ratio
        # the report's step times give, not how large it is (BENCHMARKS.md holds the figures).
        ratio = r["plain_step_ms"] / r["monitored_step_ms"]
        assert r["monitoring_overhead"] == pytest.approx(1 - ratio) and positive(r["report_ms"])
        assert r["plain_mfu"] is None and r["monitored_mfu"] is None  # no peak to divide by
        assert r["peak_memory_source"] == "host max RSS" and positive(r["peak_memory_gib"])
        assert r["out_of_memory_tries"] == [] and not r["fell_back"]
    reference = sections["trainer.torch"]
    assert reference["status"] == "ok" and reference["params"] == TINY_PARAMS
    assert positive(reference["tokens_per_s"]) and reference["mfu"] is None

    for name in ("bank.eager.tf32", "bank.compiled.tf32"):
        assert sections[name]["status"] == "skipped" and "TF32" in sections[name]["reason"]
    for name, backend in (("bank.eager.fp32", None), ("bank.compiled.fp32", "aot_eager")):
        r = sections[name]
        assert r["status"] == "ok" and r["backend"] == backend and r["models"] == 8, r
        assert positive(r["us_per_model_step"]) and positive(r["matmul_tflops"])
        assert len(r["windows_s"]) == 3 and r["train_examples"] == 23 * 23 // 2

    probes = sections["probes"]
    assert probes["status"] == "ok"
    for arch in ("mlp", "transformer"):
        costs = probes[arch]["ms_per_call"]
        assert set(costs) == {
            "weight_spectra",
            "forward_probes",
            "slow_grad_ema",
            "slow_grad_share",
            "all_probes",
        }
        assert all(positive(ms) for ms in costs.values()) and positive(
            probes[arch]["train_step_ms"]
        )

    targets = report["targets"]
    assert all(t["met"] is None for t in targets.values())  # judged on a full GPU run only
    assert targets["mfu_zero2_bf16"]["value"] is None
    assert positive(targets["bank_us_per_model_step"]["value"])
    assert "targets:" in done.stdout and "rehearsal" in done.stdout


def test_isolated_sections_are_time_boxed_and_the_rest_still_run(tmp_path: Path) -> None:
    """ZeRO-2 gets 1 s, less than importing DeepSpeed takes: its process records the timeout,
    and the bank section in the next process still runs."""
    out = tmp_path / "bench_gpu.json"
    args = ["--tiny", "--isolate", "--sections", "trainer.zero2", "bank.eager.fp32"]
    done = bench([*args, "--timeout", "trainer.zero2=1", "--out", str(out)])
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    sections = json.loads(out.read_text())["sections"]
    assert list(sections) == ["trainer.zero2", "bank.eager.fp32"]
    assert sections["trainer.zero2"]["status"] == "error"
    assert "ran past its 1 s budget" in sections["trainer.zero2"]["error"]
    assert sections["bank.eager.fp32"]["status"] == "ok"
    assert positive(sections["bank.eager.fp32"]["us_per_model_step"])
    assert "trainer.zero2 (own process)" in done.stdout


def test_in_process_time_box_skips_and_errors() -> None:
    plan = make_plan(_parser().parse_args(["--tiny"]))
    started = time.perf_counter()
    slow = run_section(lambda _: time.sleep(10) or {}, plan, 0.2)
    assert slow["status"] == "error" and "budget" in slow["error"]
    assert time.perf_counter() - started < 5

    def gpu_only(_: object) -> dict[str, Any]:
        raise Skipped("needs a GPU")

    assert run_section(gpu_only, plan, 5)["status"] == "skipped"
    broken = run_section(lambda _: {"value": 1 / 0}, plan, 5)
    assert broken["status"] == "error" and broken["error"].startswith("ZeroDivisionError")


def test_a_spent_budget_skips_the_remaining_sections(tmp_path: Path) -> None:
    out = tmp_path / "bench_gpu.json"
    assert gpu_bench_main(["--tiny", "--budget-s", "1", "--out", str(out)]) == 0
    sections = json.loads(out.read_text())["sections"]
    assert list(sections) == list(SECTIONS)
    assert all(s["status"] == "skipped" and "budget" in s["reason"] for s in sections.values())


def test_out_of_memory_halves_the_micro_batch_then_the_layers() -> None:
    """No CUDA OOM can happen on this CPU box: the attempt stands in for a GPU on which a
    configuration fits only if micro-batch × layers ≤ 4, raising torch's own exception type."""
    calls = []

    def attempt(shape: Any, micro: int) -> dict[str, Any]:
        calls.append((shape.layers, micro))
        if shape.layers * micro > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"layers": shape.layers, "micro_batch": micro}

    result = fit_to_memory(attempt, LLAMA_1B, 8)
    assert calls == [(16, 8), (16, 4), (16, 2), (16, 1), (8, 1), (4, 1)]
    assert result["layers"] == 4 and result["micro_batch"] == 1 and result["fell_back"]
    assert [(t["layers"], t["micro_batch"]) for t in result["out_of_memory_tries"]] == calls[:-1]
    assert "Tried to allocate" in result["out_of_memory_tries"][0]["error"]

    def never(shape: Any, micro: int) -> dict[str, Any]:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="even at 1 layer"):
        fit_to_memory(never, TINY, 2)


def test_peaks_by_device_name_and_the_flop_count() -> None:
    assert dense_bf16_peak("NVIDIA H200") == 989e12
    assert dense_bf16_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert dense_bf16_peak("NVIDIA H100 PCIe") == 756e12
    assert dense_bf16_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert dense_bf16_peak("Tesla T4") is None
    # 6 × (params − input embedding 256·64) + 12 · layers 2 · hidden 64 · seq 64
    assert flops_per_token(TINY_PARAMS, TINY) == 6 * (TINY_PARAMS - 16_384) + 98_304


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "3"], "steps 3 must be a multiple of report_every 2"),
        (["--timeout", "nosuch=3"], "no section 'nosuch'"),
        (["--timeout", "env=0"], "seconds must be > 0"),
        (["--sections", "env", "bogus"], "no section ['bogus']"),
        (["--bank-models", "0"], "--bank-models must be > 0"),
    ],
)
def test_bad_arguments_fail_before_any_compute(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "bench_gpu.json"
    with pytest.raises(SystemExit) as exit_info:
        gpu_bench_main(["--tiny", *args, "--out", str(out)])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()
