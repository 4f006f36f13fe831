"""GrokLightningCallback in real tiny Lightning fits: an MLP memorizing random labels, which never
generalizes. The policy stops it (``trainer.should_stop``), kicks it through
``trainer.optimizers`` with the lr scheduler carrying the kick, rolls the harmful kick back to the
saved weights, and extends a run whose evidence is fresh at ``max_t``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pl = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from grokschedule.core.decision import Cause, DecisionKind  # noqa: E402
from grokschedule.core.kicks import Kick  # noqa: E402
from grokschedule.integrations.common import MissingMetricError  # noqa: E402
from grokschedule.integrations.lightning import GrokLightningCallback  # noqa: E402

FAST = {"patience_factor": 1.0, "min_patience": 0, "judge_after": 1.0, "predictor": False}
HORIZON = 400  # the lr schedule's length in steps


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Memorizer(pl.LightningModule):
    """Logs the metric contract under GrokScheduler's default names."""

    def __init__(self, weight_decay: float = 0.1, log_train_acc: bool = True) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 4))
        self.weight_decay = weight_decay
        self.log_train_acc = log_train_acc

    def _step(self, batch, prefix: str) -> torch.Tensor:
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        self.log(f"{prefix}_loss", loss)
        if prefix == "val" or self.log_train_acc:
            self.log(f"{prefix}_acc", (logits.argmax(-1) == y).float().mean())
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=self.weight_decay)
        decay = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / HORIZON)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": decay, "interval": "step"}}


def loader(n: int, seed: int) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(seed)
    data = torch.utils.data.TensorDataset(
        torch.randn(n, 8, generator=g), torch.randint(0, 4, (n,), generator=g)
    )
    return torch.utils.data.DataLoader(data, batch_size=64)


def fit(tmp_path: Path, callbacks: list, module: Memorizer | None = None, **trainer_args):
    pl.seed_everything(0, verbose=False)
    options = {
        "max_steps": HORIZON,
        "val_check_interval": 5,
        "check_val_every_n_epoch": None,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
        "default_root_dir": str(tmp_path),
        **trainer_args,
    }
    trainer = pl.Trainer(callbacks=callbacks, **options)
    trainer.fit(module or Memorizer(), loader(16, 1), loader(64, 2))
    return trainer


def test_memorizer_is_stopped_with_its_reason(tmp_path: Path) -> None:
    callback = GrokLightningCallback(**FAST)
    logger = CSVLogger(tmp_path, name="csv")
    trainer = fit(tmp_path, [callback], logger=logger)

    stop = callback.run.last_decision
    assert stop.kind is DecisionKind.STOP and stop.cause is Cause.NEVER_GROK
    assert stop.reason.startswith("never-grok: no transition evidence")
    assert trainer.global_step == stop.step < 200 and trainer.should_stop
    # The decision's numbers reached the logger at the trainer's steps.
    logged = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()
    header = logged[0].split(",")
    assert {"scheduler/score", "weight_norm", "scheduler/window_steps"} <= set(header)


class Probe(pl.Callback):
    """Reads the optimizer, the schedule and the weights right after each decision."""

    def __init__(self, grok: GrokLightningCallback, rollback: Path) -> None:
        self.grok, self.rollback = grok, rollback
        self.seen: dict[str, dict] = {}

    def on_validation_end(self, trainer, pl_module) -> None:
        decision = self.grok.run.last_decision if self.grok.run else None
        if decision is None or decision.step != trainer.global_step:
            return
        kind = decision.kind.value
        if kind in ("KICK", "ROLLBACK") and kind not in self.seen:
            self.seen[kind] = {
                "step": trainer.global_step,
                "lr": trainer.optimizers[0].param_groups[0]["lr"],
                "base_lrs": list(trainer.lr_scheduler_configs[0].scheduler.base_lrs),
                "point": self.rollback.is_file(),
                "weights": {k: v.clone() for k, v in pl_module.state_dict().items()},
                "train_loss": float(trainer.callback_metrics["train_loss"]),
            }


def test_kick_through_trainer_optimizers_and_rollback_to_the_saved_weights(
    tmp_path: Path,
) -> None:
    kick = Kick("lr_multiply", {"factor": 1000.0}, duration_steps=500)
    callback = GrokLightningCallback(
        **FAST,
        interventions={"kicks": [kick], "max_kicks": 1, "cooldown": 0, "rollback_window": 0},
    )
    probe = Probe(callback, tmp_path / "grok_rollback" / "rollback-rank0.pt")
    fit(tmp_path, [callback, probe])

    def schedule(step: int) -> float:
        return 1e-2 * (1 - step / HORIZON)

    kicked, rolled = probe.seen["KICK"], probe.seen["ROLLBACK"]
    assert kicked["point"] and kicked["base_lrs"] == [pytest.approx(10.0)]
    assert kicked["lr"] == pytest.approx(1000 * schedule(kicked["step"]))
    assert rolled["train_loss"] > 1.0  # the kicked steps blew the memorized fit up
    for name, value in kicked["weights"].items():
        torch.testing.assert_close(rolled["weights"][name], value)
    assert rolled["base_lrs"] == [1e-2]
    assert rolled["lr"] == pytest.approx(schedule(rolled["step"]))
    assert not probe.rollback.exists()
    final = callback.run.last_decision
    assert final.kind is DecisionKind.STOP and final.cause is Cause.NEVER_GROK


def test_fresh_evidence_at_max_t_extends_the_fit(tmp_path: Path) -> None:
    """Weight decay 1 after memorization makes the weight norm fall: evidence at max_t."""
    callback = GrokLightningCallback(max_t=80, max_extension=40, predictor=False)
    trainer = fit(tmp_path, [callback], Memorizer(weight_decay=1.0), max_steps=120)

    kinds = {d.step: d.kind for d in callback.run.decisions}
    assert kinds.get(80) is DecisionKind.EXTEND
    final = callback.run.last_decision
    assert 80 < trainer.global_step == final.step <= 120
    assert final.kind is DecisionKind.STOP and final.cause is Cause.BUDGET


def test_missing_metric_is_a_clear_error(tmp_path: Path) -> None:
    callback = GrokLightningCallback(**FAST)
    with pytest.raises(MissingMetricError, match=r"did not log \['train_acc'\] by step 5"):
        fit(tmp_path, [callback], Memorizer(log_train_acc=False))


def test_defaults_are_grokschedulers() -> None:
    from grokschedule.adapters.scheduler import GrokScheduler

    for interventions in (None, True):
        callback = GrokLightningCallback(interventions=interventions)
        scheduler = GrokScheduler("val_acc", "max", interventions=interventions)
        assert callback.settings.config(20_000) == scheduler.policy.config
