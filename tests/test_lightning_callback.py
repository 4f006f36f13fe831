"""GrokLightningCallback in real tiny Lightning fits: an MLP memorizing random labels, which never
generalizes. The policy stops it (``trainer.should_stop``), kicks it through
``trainer.optimizers`` with the lr scheduler carrying the kick, rolls the harmful kick back to the
saved weights, extends a run whose evidence is fresh at ``max_t``, and goes on after
``fit(ckpt_path=...)`` with the scheduler state saved in the checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pl = pytest.importorskip("lightning.pytorch")
from callback_helpers import (  # noqa: E402
    FAST,
    RESUMABLE,
    assert_settings_are_schedulers,
    held,
)
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from grokschedule.core.decision import Cause, DecisionKind  # noqa: E402
from grokschedule.core.kicks import Kick  # noqa: E402
from grokschedule.integrations.common import MissingMetricError  # noqa: E402
from grokschedule.integrations.lightning import GrokLightningCallback  # noqa: E402

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


def fit(
    tmp_path: Path,
    callbacks: list,
    module: Memorizer | None = None,
    ckpt_path: str | None = None,
    **trainer_args,
):
    pl.seed_everything(0, verbose=False)
    options = {
        "max_steps": HORIZON,
        "val_check_interval": 5,
        "check_val_every_n_epoch": None,
        "logger": False,
        "enable_checkpointing": any(isinstance(c, ModelCheckpoint) for c in callbacks),
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
        "default_root_dir": str(tmp_path),
        **trainer_args,
    }
    trainer = pl.Trainer(callbacks=callbacks, **options)
    trainer.fit(module or Memorizer(), loader(16, 1), loader(64, 2), ckpt_path=ckpt_path)
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


# RESUMABLE's kick is in force from step 50 to 80; the interrupted fit's last checkpoint is at 55.
CHECKPOINT = 55


class Preempted(Exception):
    pass


class Interrupt(pl.Callback):
    """Fails the fit right after the checkpoint at ``step``, as a preempted job would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise Preempted


class Resumed(pl.Callback):
    """What the scheduler holds when a resumed fit starts (GrokLightningCallback runs first)."""

    def __init__(self, grok: GrokLightningCallback) -> None:
        self.grok = grok
        self.at_start: dict | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.at_start = held(self.grok)
        self.at_start["lr"] = trainer.optimizers[0].param_groups[0]["lr"]


def checkpoints(tmp_path: Path) -> ModelCheckpoint:
    return ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1)  # at every validation


def interrupted_fit(tmp_path: Path) -> tuple[GrokLightningCallback, Path]:
    callback = GrokLightningCallback(**RESUMABLE)
    with pytest.raises(Preempted):
        fit(tmp_path, [callback, Interrupt(CHECKPOINT), checkpoints(tmp_path)])
    [checkpoint] = (tmp_path / "ckpt").glob(f"*-step={CHECKPOINT}.ckpt")
    return callback, checkpoint


def test_resumed_fit_goes_on_with_the_scheduler_state_of_its_checkpoint(tmp_path: Path) -> None:
    """The policy's memory, the kick budget used and the kick in force (its lr) survive
    ``fit(ckpt_path=...)``, and the resumed fit decides as the uninterrupted one did."""
    whole = GrokLightningCallback(**RESUMABLE)
    uninterrupted = fit(tmp_path / "whole", [whole, checkpoints(tmp_path / "whole")])
    first, checkpoint = interrupted_fit(tmp_path / "parts")
    at_checkpoint = held(first)
    assert at_checkpoint["memorized_step"] is not None and at_checkpoint["kicks_used"] == 1
    assert at_checkpoint["kicks_in_force"]  # the kick's window runs past the checkpoint

    callback = GrokLightningCallback(**RESUMABLE)
    resumed = Resumed(callback)
    trainer = fit(tmp_path / "parts", [callback, resumed], ckpt_path=str(checkpoint))

    lr_at_checkpoint = resumed.at_start.pop("lr")
    assert resumed.at_start == at_checkpoint
    assert lr_at_checkpoint == pytest.approx(3e-2 * (1 - CHECKPOINT / HORIZON))  # kicked
    assert callback.run.decisions == whole.run.decisions
    assert callback.run.decisions[-1].kind is DecisionKind.STOP
    assert trainer.global_step == uninterrupted.global_step


def test_resume_without_a_saved_state_warns_and_a_corrupt_one_is_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, checkpoint = interrupted_fit(tmp_path)
    saved = torch.load(checkpoint, weights_only=False)
    [key] = [k for k in saved["callbacks"] if k.startswith("GrokLightningCallback")]
    state = saved["callbacks"].pop(key)  # as a checkpoint saved by an older version
    torch.save(saved, checkpoint)
    callback = GrokLightningCallback(**RESUMABLE)
    with caplog.at_level(logging.WARNING, logger="grokschedule.integrations"):
        fit(tmp_path, [callback], ckpt_path=str(checkpoint))
    assert [r.message for r in caplog.records if "without a scheduler state" in r.message]
    assert callback.run.decisions[0].step == CHECKPOINT + 5  # a policy that saw nothing before

    saved["callbacks"][key] = {"run": state["run"][:100]}  # truncated
    torch.save(saved, checkpoint)
    with pytest.raises(ValueError, match="checkpoint state: not a readable grokschedule state"):
        fit(tmp_path, [GrokLightningCallback(**RESUMABLE)], ckpt_path=str(checkpoint))


def test_missing_metric_is_a_clear_error(tmp_path: Path) -> None:
    callback = GrokLightningCallback(**FAST)
    with pytest.raises(MissingMetricError, match=r"did not log \['train_acc'\] by step 5"):
        fit(tmp_path, [callback], Memorizer(log_train_acc=False))


def test_every_argument_reaches_the_settings() -> None:
    assert_settings_are_schedulers(GrokLightningCallback)


def test_defaults_are_grokschedulers() -> None:
    from grokschedule.adapters.scheduler import GrokScheduler

    for interventions in (None, True):
        callback = GrokLightningCallback(interventions=interventions)
        scheduler = GrokScheduler("val_acc", "max", interventions=interventions)
        assert callback.settings.config(20_000) == scheduler.policy.config
