"""The LM probe-set signals and the DeepSpeed trainer's model probes on real engines (gloo, one
rank) under ZeRO-2 and ZeRO-3: present, finite, and consistent with the metrics beside them."""

from __future__ import annotations

import math

import pytest
import torch

from grokschedule.core.contract import (
    LORA_EFF_RANK_MEAN,
    LORA_EFF_RANK_MIN,
    MOE_PATHWAY_COMPLEXITY,
    MOE_PATHWAY_DISTANCE,
    MOE_PATHWAYS,
    PROBE_INTERVAL,
    PROBE_MS,
    VAL_CONFIDENCE,
    group_norm_metric,
    probe_metric,
)
from grokschedule.training.deepspeed.config import TrainerConfig
from grokschedule.training.deepspeed.engine import DeepSpeedRun
from grokschedule.training.deepspeed.reporting import report_metrics
from grokschedule.training.deepspeed.trainer_probes import (
    TrainerProbes,
    distinct_n,
    layer_group,
)

pytestmark = pytest.mark.slow
pytest.importorskip("transformers")
pytest.importorskip("peft")

BASE = {
    "task": "lm",
    "lm_p": 11,
    "lm_hidden": 32,
    "lm_layers": 1,
    "num_workers": 1,
    "batch_size": 16,
    "micro_batch_size": 8,
    "lr": 3e-3,
    "weight_decay": 0.1,
}


def lm_run(**overrides: object) -> DeepSpeedRun:
    from grokschedule.training.deepspeed.lm_task import LMTask

    values = {**BASE, **overrides}
    config = TrainerConfig.from_mapping(values)
    return DeepSpeedRun(config, LMTask.from_mapping(values, False), torch.device("cpu"))


def train(run: DeepSpeedRun, steps: int) -> None:
    for _ in range(steps):
        run.train_step()
        run.after_step()


@pytest.fixture(scope="module")
def reports(process_group: None) -> dict[int, tuple[dict, dict]]:
    """One LoRA run per ZeRO stage: its report (with probes due) and its unscheduled probes."""
    out = {}
    for stage in (2, 3):
        run = lm_run(zero_stage=stage, lm_lora_rank=4)
        train(run, 6)
        probes = TrainerProbes(every=1, budget=1.0)
        out[stage] = (report_metrics(run, probes), probes.measure(run))
    return out


@pytest.mark.parametrize("stage", [2, 3])
def test_probe_set_signals_are_present_finite_and_consistent(
    reports: dict[int, tuple[dict, dict]], stage: int
) -> None:
    metrics, _ = reports[stage]
    for split in ("val", "probe"):
        loss = metrics[probe_metric(split, "loss")]
        assert math.isfinite(loss) and loss > 0
        assert metrics[probe_metric(split, "ppl")] == pytest.approx(math.exp(loss), rel=1e-12)
        # greedy exact-match is the all-tokens-right accuracy already reported
        assert metrics[probe_metric(split, "exact_match")] == metrics[f"{split}_acc"]
        confidences = [
            metrics[key]
            for key in (probe_metric(split, "conf_correct"), probe_metric(split, "conf_wrong"))
            if key in metrics
        ]
        assert confidences and all(0 < c <= 1 for c in confidences)
        for n in (1, 2):
            assert 0 <= metrics[probe_metric(split, f"distinct_{n}")] <= 1
    assert 0 < metrics[VAL_CONFIDENCE] <= 1
    assert metrics[PROBE_MS] > 0 and metrics[PROBE_INTERVAL] >= 1
    # a token-mean loss and the example-mean val_loss weigh answers differently, but agree
    assert metrics[probe_metric("val", "loss")] == pytest.approx(metrics["val_loss"], rel=0.3)


def test_probes_agree_between_zero2_and_zero3(reports: dict[int, tuple[dict, dict]]) -> None:
    """Same seed, same batches: ZeRO-3's partitioned weights give the numbers ZeRO-2 gives."""
    (zero2, probes2), (zero3, probes3) = reports[2], reports[3]
    groups = [group_norm_metric(g) for g in ("embeddings", "attention", "mlp", "norm", "lora")]
    for key in [*groups, LORA_EFF_RANK_MEAN, LORA_EFF_RANK_MIN]:
        assert zero3[key] == pytest.approx(zero2[key], rel=1e-4), key
        assert probes3[key] == pytest.approx(probes2[key], rel=1e-4), key
    assert 1 <= zero2[LORA_EFF_RANK_MIN] <= zero2[LORA_EFF_RANK_MEAN] <= 4  # ≤ the LoRA rank
    assert zero3[probe_metric("val", "loss")] == pytest.approx(
        zero2[probe_metric("val", "loss")], rel=1e-4
    )
    assert group_norm_metric("head") not in zero2  # tied to the embeddings: counted once


def test_a_mixture_of_experts_lm_reports_routing_pathways(process_group: None) -> None:
    run = lm_run(zero_stage=3, lm_experts=4)
    assert "Mixtral" in type(run.engine.module).__name__
    train(run, 2)
    out = TrainerProbes(every=1, budget=1.0).measure(run)
    assert 0 <= out[MOE_PATHWAY_DISTANCE] <= 1 and 0 <= out[MOE_PATHWAY_COMPLEXITY] <= 1
    assert 1 <= out[MOE_PATHWAYS] <= 64
    assert group_norm_metric("router") in out and group_norm_metric("mlp") in out
    assert LORA_EFF_RANK_MEAN not in out  # no adapter: full fine-tuning


def test_moe_and_probe_arguments_are_checked() -> None:
    from grokschedule.training.deepspeed.lm_task import LMTaskConfig

    with pytest.raises(ValueError, match="lm_experts must be an int >= 2"):
        LMTaskConfig(experts=1)
    with pytest.raises(ValueError, match="probe_every must be an int > 0"):
        TrainerConfig(probe_every=0)
    with pytest.raises(ValueError, match="probe_budget"):
        TrainerConfig(probe_budget=0.0)


def test_distinct_n_and_layer_groups() -> None:
    assert distinct_n([[1, 2, 1], [1, 2]], 1) == 2 / 5
    assert distinct_n([[1, 2, 1], [1, 2]], 2) == 2 / 3  # (1,2) twice, (2,1) once
    assert distinct_n([[1]], 2) == 0.0
    names = {
        "base_model.model.model.embed_tokens.weight": "embeddings",
        "model.layers.0.self_attn.q_proj.weight": "attention",
        "model.layers.0.self_attn.q_proj.lora_A.default.weight": "lora",
        "model.layers.0.mlp.gate.weight": "router",
        "model.layers.0.mlp.gate_proj.weight": "mlp",
        "model.layers.0.mlp.experts.down_proj": "mlp",
        "model.norm.weight": "norm",
        "lm_head.weight": "head",
    }
    assert {name: layer_group(name) for name in names} == names


def test_greedy_generation_reads_back_what_the_model_predicts() -> None:
    """With a model that echoes the text it was built from, greedy decoding returns each answer
    (no eos, no prompt); with one that counts up from its last token, it feeds back what it
    generated, up to the answer's length."""
    from types import SimpleNamespace

    from grokschedule.training.deepspeed.lm_task import (
        CharTokenizer,
        encode_examples,
        greedy_answers,
    )

    tokenizer = CharTokenizer()
    problems = [("7+9=", "5"), ("12+10=", "22"), ("3+3+3=", "9")]
    inputs, targets = encode_examples(problems, tokenizer, 12)
    vocab = tokenizer.vocab_size

    def echo(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        following = torch.roll(inputs, -1, dims=1)  # the true next token at every position
        return SimpleNamespace(logits=torch.nn.functional.one_hot(following, vocab).float())

    digit = [tokenizer.encode(str(d))[0] for d in range(10)]

    def count_up(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        """After "=" say "0", after digit d say d + 1 (mod 10): reads what it generated."""
        nxt = torch.full_like(input_ids, digit[0])
        for d in range(10):
            nxt[input_ids == digit[d]] = digit[(d + 1) % 10]
        return SimpleNamespace(logits=torch.nn.functional.one_hot(nxt, vocab).float())

    decoded = [tokenizer.decode(a) for a in greedy_answers(echo, inputs, targets)]
    assert decoded == ["5", "22", "9"]
    counted = [tokenizer.decode(a) for a in greedy_answers(count_up, inputs, targets)]
    assert counted == ["01", "012", "01"]  # as long as answer + eos, eos never said
