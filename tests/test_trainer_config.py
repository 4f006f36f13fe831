"""TrainerConfig validation, the DeepSpeed JSON, the LR schedule and the memory estimate."""

from __future__ import annotations

import pytest

from grokschedule.training.deepspeed.config import (
    GIB,
    TrainerConfig,
    check_fits,
    cuda_arch_list_for_deepspeed,
    deepspeed_config,
    lr_at,
    model_state_bytes,
)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"zero_stage": 4}, r"zero_stage must be one of \(0, 1, 2, 3\), got 4"),
        ({"precision": "fp8"}, "precision must be one of"),
        ({"optimizer": "lion"}, "optimizer must be one of"),
        (
            {"batch_size": 100, "micro_batch_size": 16, "num_workers": 2},
            r"batch_size 100 is not divisible by micro_batch_size 16 × num_workers 2 = 32; "
            r"nearest valid: 96 or 128",
        ),
        ({"precision": "fp16"}, "'fp16' needs use_gpu=True"),
        ({"fused_adam": True}, "FusedAdam is a CUDA kernel"),
        ({"lr": 0.0}, "need lr > 0"),
        ({"controller_failure_limit": -1}, "bounded retries"),
        ({"checkpoint_every": 30, "eval_every": 20}, "checkpoint_every 30 must be a multiple"),
    ],
)
def test_bad_config_is_a_value_error_with_the_numbers(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainerConfig(**overrides)


def test_from_mapping_ignores_task_and_tune_keys() -> None:
    config = TrainerConfig.from_mapping({"p": 47, "op": "add", "zero_stage": 2, "lr": 3e-3})
    assert config.zero_stage == 2 and config.lr == 3e-3


def test_deepspeed_config_splits_the_batch_and_picks_the_optimizer() -> None:
    config = TrainerConfig(
        num_workers=2, batch_size=128, micro_batch_size=16, zero_stage=2, precision="bf16"
    )
    ds = deepspeed_config(config)
    assert ds["gradient_accumulation_steps"] == 4
    assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"]["enabled"]
    assert ds["optimizer"]["type"] == "AdamW" and ds["optimizer"]["params"]["torch_adam"]
    assert "scheduler" not in ds  # the loop owns the schedule, so kicks compose with it
    sgd = deepspeed_config(config, optimizer="sgd", batch_size=256)
    assert sgd["optimizer"]["type"] == "SGD" and sgd["gradient_accumulation_steps"] == 8
    gpu = TrainerConfig(use_gpu=True, precision="bf16", batch_size=32, micro_batch_size=16)
    assert not deepspeed_config(gpu)["optimizer"]["params"]["torch_adam"]  # FusedAdam on CUDA


def test_lr_schedule_warms_up_then_decays_to_the_floor() -> None:
    config = TrainerConfig(lr=1.0, warmup_steps=10, max_steps=110, lr_schedule="cosine")
    assert lr_at(config, 0) == pytest.approx(0.1)
    assert lr_at(config, 9) == pytest.approx(1.0)
    assert lr_at(config, 60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(config, 110) == pytest.approx(0.1)
    assert lr_at(TrainerConfig(lr=0.5), 1234) == 0.5


def test_memory_estimate_follows_the_zero_paper() -> None:
    n = 1_000_000_000
    # Mixed-precision Adam: 2 + 2 + 12 bytes per param, ZeRO-3 on 8 ranks divides all of it.
    stage0 = TrainerConfig(precision="bf16", zero_stage=0, batch_size=16, micro_batch_size=8)
    assert model_state_bytes(n, n, stage0, 1) == 16 * n
    stage3 = TrainerConfig(
        precision="bf16", zero_stage=3, num_workers=8, batch_size=64, micro_batch_size=8
    )
    assert model_state_bytes(n, n, stage3, 8) == 2 * n
    with pytest.raises(ValueError, match=r"model does not fit: 1,000,000,000 params .* 14.90 GiB"):
        check_fits(n, n, stage0, 1, 14 * GIB, "H100 80GB HBM3 memory")
    limited = TrainerConfig(memory_limit_gb=0.001)
    with pytest.raises(ValueError, match=r"memory_limit_gb is 0\.00 GiB"):
        check_fits(1_000_000, 1_000_000, limited, 2, 80 * GIB, "host")


def test_cuda_arch_list_drops_arch_specific_suffixes() -> None:
    assert cuda_arch_list_for_deepspeed("9.0a") == "9.0"
    assert cuda_arch_list_for_deepspeed("8.0;9.0a 10.0a+PTX") == "8.0;9.0;10.0+PTX"
    assert cuda_arch_list_for_deepspeed("9.0;9.0a") == "9.0"
    with pytest.raises(ValueError, match="not like"):
        cuda_arch_list_for_deepspeed("hopper")
