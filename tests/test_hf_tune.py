"""A Hugging Face Trainer under Ray Tune, judged by GrokScheduler: a two-trial sweep of a tiny
causal LM (a 3k-parameter Llama built in code) learning modular addition written as text, each
trial a Ray Train V2 ``TorchTrainer`` launched from a Tune function (Ray 2.60 runs no V2 trainer
as a Tune trainable itself), the Trainer wrapped by ``prepare_trainer`` and reporting through
``RayTrainReportCallback``, with ``GrokMetricsCallback`` adding the weight norm."""

from __future__ import annotations

import tempfile
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
from ray import tune
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from grokschedule.adapters.trainables.train_guard import (
    AbortTrainRunOnStop,
    ReleaseOnStop,
    register_reaper,
    start_reaper,
)

# Every process of a trial (its Tune actor, the Train controller, the worker) imports this
# module; only the worker needs transformers, whose Trainer takes ~10 s to import here.

pytestmark = pytest.mark.slow

P = 7  # "a+b=c" with digits mod 7; tokens 0..6, then "+" and "="
PLUS, EQUALS = P, P + 1
MAX_STEPS = 40


class AdditionText(torch.utils.data.Dataset):
    """Every "a+b=c (mod P)" as five tokens, the loss on the answer alone."""

    def __init__(self, pairs: list[tuple[int, int]]) -> None:
        self.x = torch.tensor([[a, PLUS, b, EQUALS, (a + b) % P] for a, b in pairs])

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        labels = torch.full_like(self.x[i], -100)
        labels[-1] = self.x[i, -1]
        return {"input_ids": self.x[i], "labels": labels}


def answer_accuracy(prediction) -> dict[str, float]:
    # The answer's logits sit one position before it (preprocess keeps only their argmax).
    guessed = prediction.predictions[:, -2]
    return {"accuracy": float(np.mean(guessed == prediction.label_ids[:, -1]))}


def train_loop(config: dict[str, Any]) -> None:
    """On the Train worker: a plain Hugging Face Trainer, prepared for Ray Train."""
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    from grokschedule.integrations.hf import GrokMetricsCallback

    torch.set_num_threads(1)
    torch.manual_seed(0)
    pairs = [(a, b) for a in range(P) for b in range(P)]
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0)).tolist()
    train = AdditionText([pairs[i] for i in order[:30]])
    held_out = AdditionText([pairs[i] for i in order[30:]])
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=P + 2,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=8,
            tie_word_embeddings=True,
        )
    )
    args = TrainingArguments(
        tempfile.mkdtemp(prefix="hf-"),
        max_steps=MAX_STEPS,
        per_device_train_batch_size=32,
        learning_rate=config["lr"],
        weight_decay=1.0,
        lr_scheduler_type="constant",
        eval_strategy="steps",
        eval_steps=10,
        logging_steps=10,
        save_strategy="steps",  # RayTrainReportCallback reports at each save
        save_steps=10,
        save_total_limit=1,
        save_only_model=True,
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=held_out,
        compute_metrics=answer_accuracy,
        preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(-1),
        callbacks=[GrokMetricsCallback(), RayTrainReportCallback()],
    )
    prepare_trainer(trainer).train()


def hf_trainable(config: dict[str, Any]) -> None:
    """The Tune function: one Train V2 run per trial, in the trial's own directory, torn down
    when the scheduler stops the trial (``train_guard``)."""
    storage = tune.get_context().get_storage()
    reaper = start_reaper()
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(
            name="train",
            storage_path=storage.trial_fs_path,
            storage_filesystem=storage.storage_filesystem,
            callbacks=[TuneReportCallback(), ReleaseOnStop(reaper)],
        ),
    )
    register_reaper(reaper)
    trainer.fit()


hf_trainable.__mixins__ = (AbortTrainRunOnStop,)  # type: ignore[attr-defined]


def test_tune_sweep_of_hf_trainers_is_judged_by_grokscheduler(local_ray, tmp_path) -> None:
    from grokschedule.core.decision import DecisionKind
    from tune_plugins import GrokScheduler

    scheduler = GrokScheduler(
        metric="eval_accuracy",
        mode="max",
        max_t=MAX_STEPS,
        max_extension=0,
        train_loss="loss",  # what the Trainer logs
        train_acc=None,
        val_loss="eval_loss",
        weight_norm="weight_norm",  # GrokMetricsCallback
        patience_factor=1.0,
        min_patience=0,
        judge_after=1.0,
    )
    tuner = tune.Tuner(
        tune.with_resources(hf_trainable, {"cpu": 0.01}),
        param_space={"lr": tune.grid_search([3e-3, 3e-2])},
        tune_config=tune.TuneConfig(scheduler=scheduler),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "ray_results"), verbose=0),
    )
    results = tuner.fit()

    assert len(results) == 2 and not results.errors
    for result in results:
        history = result.metrics_dataframe
        steps = list(history["step"])
        assert steps == list(range(10, steps[-1] + 1, 10)) and steps[-1] <= MAX_STEPS
        contract = ["loss", "eval_loss", "eval_accuracy", "weight_norm"]
        assert history[contract].notna().all().all()
        decisions = scheduler.decision_log(result.metrics["trial_id"])
        assert decisions, f"no decision for trial {result.metrics['trial_id']}"
        last = scheduler.last_decision(result.metrics["trial_id"])
        assert last.step == steps[-1]
        # Each trial ends on a decision: stopped by the scheduler, or at its budget.
        assert last.kind is DecisionKind.STOP
