"""The built-in task behaves as the grokking literature says (checked on CPU, ~25 s)."""

import pytest
import torch

from grokschedule.training.modular.task import ModularTask, build_model
from grokschedule.training.modular.trainer import ModularTrainer, TrainConfig

KNOWN = {"p": 47, "train_fraction": 0.5, "lr": 3e-3, "embed_dim": 64, "hidden_dim": 256}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _first_grok(config: TrainConfig) -> tuple[int | None, float]:
    val_acc = 0.0
    for metrics in ModularTrainer(config).run():
        val_acc = metrics["val_acc"]
        if val_acc >= 0.95:
            return int(metrics["step"]), val_acc
    return None, val_acc


def test_known_setting_groks_within_2000_steps() -> None:
    step, _ = _first_grok(TrainConfig(weight_decay=1.0, max_steps=2_000, eval_every=100, **KNOWN))
    assert step is not None and step <= 2_000


def test_without_weight_decay_it_memorizes_but_does_not_generalize() -> None:
    config = TrainConfig(weight_decay=0.0, max_steps=2_000, eval_every=500, **KNOWN)
    trainer = ModularTrainer(config)
    *_, last = trainer.run()
    assert last["train_acc"] == 1.0
    assert last["val_acc"] < 0.1


def test_split_covers_every_pair_once() -> None:
    x_train, y_train, x_val, _ = ModularTask("div", 13, 0.3, seed=1).split()
    pairs = {tuple(p) for p in torch.cat([x_train, x_val]).tolist()}
    assert len(pairs) == 13 * 12  # y = 0 excluded for division
    # x / y * y == x (mod p)
    assert all((int(y) * int(b)) % 13 == int(a) for (a, b), y in zip(x_train, y_train, strict=True))


def test_transformer_builds_and_maps_pairs_to_logits() -> None:
    model = build_model("transformer", p=11, embed_dim=16, hidden_dim=32)
    assert model(torch.tensor([[1, 2], [3, 4]])).shape == (2, 11)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"optimizer": "adam8bit"}, "optimizer"),
        ({"lr": -1e-3}, "lr"),
        ({"lr": 0}, "lr"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"p": 48}, "p must be a prime"),
        ({"op": "pow"}, "op"),
        ({"train_fraction": 1.0}, "train_fraction"),
        ({"max_steps": 0}, "max_steps"),
    ],
)
def test_bad_config_is_rejected_before_training(kwargs, field) -> None:
    with pytest.raises(ValueError, match=field):
        TrainConfig(**kwargs).task  # noqa: B018 — building the task validates it
