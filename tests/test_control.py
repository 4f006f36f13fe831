"""The live control channel and the trainer side of interventions: commands, acks, rollback
snapshots, and the PBT-style restart fallback; the Ray ones on a real local cluster (~1 min)."""

from __future__ import annotations

import copy
import io
import json
import logging
import math
import pickle
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import ray
import torch
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler

from grokschedule.adapters.control_channel import (
    CHANNEL_NAME,
    CONTROL_KEY,
    ControlChannel,
    ControlClient,
    key_from_config,
)
from grokschedule.adapters.restart import restart_with_config
from grokschedule.adapters.scheduler import GrokScheduler
from grokschedule.adapters.trainables.modular import (
    _load_state,
    _save_state,
    kick_config_change,
    modular_trainable,
)
from grokschedule.bench.interventions import (
    KIND_NAMES,
    BenchSettings,
    PolicyDecide,
    RunSpec,
    bench_policy,
    interventions_bench_main,
    run_one,
)
from grokschedule.core.commands import (
    BAD_SIGNATURE,
    MALFORMED,
    OTHER_SWEEP,
    REFUSED,
    REPLAYED,
    UNKNOWN_TRIAL,
    Command,
    CommandGate,
    Refusal,
    SweepKey,
    config_change,
)
from grokschedule.core.kicks import Kick
from grokschedule.training import checkpoints
from grokschedule.training.modular.trainer import ModularTrainer, TrainConfig

torch.set_num_threads(1)

SMALL = {"p": 23, "train_fraction": 0.5, "embed_dim": 16, "hidden_dim": 32, "eval_every": 10}
HARMFUL = Kick("lr_multiply", {"factor": 1000.0}, reason="deliberately harmful")
BENIGN = Kick("weight_decay", {"factor": 2.0}, 60)


def kick(command_id: int, k: Kick = HARMFUL) -> dict[str, Any]:
    return {"id": command_id, "type": "kick", "kick": k.to_dict()}


def params(trainer: ModularTrainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.parameters()]


def train(trainer: ModularTrainer, n: int) -> None:
    for _ in range(n):
        trainer.train_step()


# -- protocol -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ({"id": 1, "type": "reset"}, r"command type must be one of \('kick', 'rollback'\)"),
        ({"id": 1}, r"command type must be one of"),
        ({"id": 1, "type": "rollback", "kick": {}}, r"exactly the keys \['id', 'type'\]"),
        ({"type": "rollback"}, r"exactly the keys \['id', 'type'\], got \['type'\]"),
        ({"id": -1, "type": "rollback"}, r"command id must be an int >= 0, got -1"),
        ({"id": True, "type": "rollback"}, r"command id must be an int >= 0, got True"),
        ({"id": "3", "type": "rollback"}, r"command id must be an int >= 0, got '3'"),
        ({"id": 2, "type": "kick"}, r"exactly the keys \['id', 'kick', 'type'\]"),
        ({"id": 2, "type": "kick", "kick": "lr_multiply"}, r"command 2: 'kick' must be a Kick"),
        (
            {"id": 2, "type": "kick", "kick": {"kind": "lr_boost"}},
            r"command 2: malformed kick: kind must be one of",
        ),
        (
            {"id": 2, "type": "kick", "kick": {"kind": "lr_multiply", "params": {}}},
            r"command 2: malformed kick: params\['factor'\] is required",
        ),
        (
            {"id": 2, "type": "kick", "kick": {"kind": "grokfast", "lamb": 2}},
            r"command 2: malformed kick: .*only keys",
        ),
        (["kick", 2], r"a command must be a dict, got list"),
    ],
)
def test_bad_commands_are_clear_value_errors(command: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Command.from_dict(command)
    # The scheduler side rejects it before it reaches Ray; the trainer side too.
    with pytest.raises(ValueError, match=message):
        ControlChannel().post("trial", command)
    with pytest.raises(ValueError, match=message):
        ModularTrainer(TrainConfig(**SMALL)).apply_command(command)


def test_commands_round_trip_and_ids_must_grow() -> None:
    for data in (kick(3), {"id": 4, "type": "rollback"}):
        assert Command.from_dict(data).to_dict() == data
    trainer = ModularTrainer(TrainConfig(**SMALL))
    trainer.apply_command(kick(3, Kick("grokfast")))
    with pytest.raises(ValueError, match=r"command 3 is not newer than the last one applied"):
        trainer.apply_command({"id": 3, "type": "rollback"})
    with pytest.raises(ValueError, match="poll_every must be an int > 0"):
        ControlClient("trial", 0, SweepKey.generate())


# -- authentication: only the owning sweep's signed, fresh commands are applied -----------------

KEY = SweepKey.generate("sweep-a")


def signed(command: dict[str, Any], trial: str = "trial", key: SweepKey = KEY) -> dict[str, Any]:
    return key.sign(trial, Command.from_dict(command))


def test_a_gate_admits_each_genuine_command_once_and_refuses_the_rest() -> None:
    gate = CommandGate(KEY, "trial")
    genuine = signed(kick(0, BENIGN))
    assert gate.admit(genuine) == Command.from_dict(kick(0, BENIGN))
    forged = {**genuine, "command": kick(1)}  # a harmful payload under the benign one's MAC
    impostor = SweepKey(KEY.sweep_id, b"guessed-secret-16b")  # claims this sweep, wrong secret
    cases = {
        BAD_SIGNATURE: [forged, signed(kick(2), key=impostor)],
        OTHER_SWEEP: [signed(kick(3), key=SweepKey.generate("sweep-b"))],
        UNKNOWN_TRIAL: [signed(kick(4), trial="another-trial")],
        REPLAYED: [genuine, signed({"id": 0, "type": "rollback"})],
        MALFORMED: [kick(5), {**genuine, "signature": None}, ["kick", 6]],
    }
    for reason, envelopes in cases.items():
        for envelope in envelopes:
            refusal = gate.admit(envelope)
            assert isinstance(refusal, Refusal), envelope
            assert refusal.reason == reason, refusal.describe()
    assert gate.refused == 9 and gate.metrics() == {REFUSED: 9}
    assert gate.last_id == 0  # nothing refused moved the floor
    refusal = gate.admit(signed(kick(7), key=SweepKey.generate("sweep-b")))
    assert "claimed sweep 'sweep-b', trial 'trial', command id 7" in refusal.describe()
    assert "this trial belongs to sweep 'sweep-a'" in refusal.describe()
    # A fresh genuine command is admitted; ids need only grow, not be consecutive.
    assert gate.admit(signed({"id": 8, "type": "rollback"})) == Command(8, "rollback")


def test_a_restored_trainer_never_admits_what_it_acknowledged_before() -> None:
    gate = CommandGate(KEY, "trial", acked_id=3)
    assert gate.admit(signed(kick(3))).reason == REPLAYED
    gate.acknowledged(5)
    assert gate.admit(signed(kick(4))).reason == REPLAYED
    assert gate.admit(signed(kick(6))) == Command.from_dict(kick(6))
    gate.acknowledged(2)  # never lowers the floor
    assert gate.last_id == 6


def test_the_sweep_key_keeps_its_secret_out_of_text_and_checks_its_fields() -> None:
    key = SweepKey.generate()
    assert len(key.secret) == 32 and key.sweep_id != SweepKey.generate().sweep_id
    config = {"lr": 0.1, CONTROL_KEY: key}
    for text in (repr(config), str(key), json.dumps(config, default=str)):
        assert key.secret.hex() not in text and repr(key.secret) not in text
        assert "secret=<hidden>" in text
    assert pickle.loads(pickle.dumps(key)) == key  # it must still reach the workers
    assert key_from_config(config) is key
    with pytest.raises(ValueError, match=r"needs the sweep's SweepKey under config\['_grok"):
        key_from_config({"lr": 0.1})
    with pytest.raises(ValueError, match="secret must be at least 16 random bytes"):
        SweepKey("sweep", b"short")
    with pytest.raises(ValueError, match="sweep_id must be a non-empty str, got ''"):
        SweepKey("", b"0123456789abcdef")
    with pytest.raises(ValueError, match="key must be a SweepKey, got str"):
        CommandGate("secret", "trial")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="command id must be an int >= 0"):  # before signing
        ControlChannel(key=key).post("trial", {"id": -1, "type": "rollback"})


def test_the_scheduler_hands_its_channel_key_to_each_trial_it_adds() -> None:
    scheduler = GrokScheduler(metric="val_acc", mode="max", max_t=100, interventions=True)
    trial = Trial("modular_trainable", config={"lr": 0.1}, stub=True)
    scheduler.on_trial_add(None, trial)  # type: ignore[arg-type]
    assert trial.config[CONTROL_KEY] is scheduler._channel.key
    plain = Trial("modular_trainable", config={"lr": 0.1}, stub=True)
    GrokScheduler(metric="val_acc", mode="max", max_t=100).on_trial_add(None, plain)  # type: ignore[arg-type]
    assert plain.config == {"lr": 0.1}  # no interventions: no commands, no key


# -- trainer: kicks, acks, rollback ------------------------------------------------------------


def test_harmful_kick_then_rollback_restores_the_snapshot_exactly_even_after_a_restart() -> None:
    config = TrainConfig(**SMALL, weight_decay=1.0)
    reference, trainer = ModularTrainer(config), ModularTrainer(config)
    train(reference, 30)
    train(trainer, 30)
    assert trainer.control_metrics() == {
        "control/acked_id": -1,
        "control/applied_step": -1,
        "control/rollbacks": 0,
        "control/kicks_active": 0,
        "control/not_applied_id": -1,
    }
    trainer.apply_command(kick(0, BENIGN))
    train(trainer, 10)
    snapshot = params(trainer)
    loss_before = trainer.evaluate()["train_loss"]
    trainer.apply_command(kick(1))
    train(trainer, 20)
    harmed = trainer.evaluate()["train_loss"]
    assert math.isnan(harmed) or harmed > 10 * loss_before  # it did harm
    assert trainer.control_metrics()["control/kicks_active"] == 2

    # The worker restarts from a checkpoint taken after the kick; the snapshot survives it.
    buffer = io.BytesIO()
    torch.save(trainer.state_dict(), buffer)
    buffer.seek(0)
    restarted = ModularTrainer(config)
    restarted.load_state_dict(torch.load(buffer, weights_only=False))
    assert restarted.apply_command({"id": 2, "type": "rollback"}) is None

    for p, q in zip(restarted.model.parameters(), snapshot, strict=True):
        assert torch.equal(p, q)
    assert restarted.step == 60  # the step counter goes on: time_attr stays monotone
    assert restarted.control_metrics() == {
        "control/acked_id": 2,
        "control/applied_step": 60,
        "control/rollbacks": 1,
        "control/kicks_active": 1,  # the benign kick, as it was at the snapshot
        "control/not_applied_id": -1,
    }
    # Its window moved with the rollback: 50 of its 60 steps were left, and they still are.
    (benign,) = restarted.applier.active
    assert benign.start == 30 + 20 and benign.end == 110
    assert restarted.optimizer.param_groups[0]["weight_decay"] == 2 * config.weight_decay
    assert restarted.optimizer.param_groups[0]["lr"] == config.lr
    with pytest.raises(ValueError, match="rollback command 3: no kick since the last rollback"):
        restarted.apply_command({"id": 3, "type": "rollback"})

    # Training proceeds from the snapshot exactly as the run without the harmful kick would.
    train(restarted, 60)
    unharmed = ModularTrainer(config)
    train(unharmed, 30)
    unharmed.apply_command(kick(0, BENIGN))
    train(unharmed, 70)
    for p, q in zip(restarted.model.parameters(), unharmed.model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert not restarted.applier.active  # the benign window ended on time
    assert restarted.evaluate()["train_loss"] < loss_before


def same_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two optimizer state dicts hold equal tensors."""
    pairs = [(a["state"][i][k], b["state"][i][k]) for i in b["state"] for k in b["state"][i]]
    return a["state"].keys() == b["state"].keys() and all(torch.equal(x, y) for x, y in pairs)


def test_a_checkpoint_inside_an_sgd_window_keeps_the_window_adamw_and_the_rollback_point(
    tmp_path: Path,
) -> None:
    """The trainable's own checkpoint (weights-only torch file) taken inside an AdamW→SGD
    window, after a kick inside it: the restarted trainer finishes the window, switches back to
    the untouched AdamW state and rolls back to the point, as the uninterrupted one does."""
    config = TrainConfig(**SMALL, weight_decay=1.0)
    reference, trainer = ModularTrainer(config), ModularTrainer(config)
    for each in (reference, trainer):
        train(each, 10)
        home = copy.deepcopy(each.optimizer.state_dict())  # the same in both
        each.apply_command(kick(0, Kick("sgd_switch", {"lr": 1e-2, "momentum": 0.5}, 10)))
        train(each, 3)
        point = params(each)
        each.apply_command(kick(1, BENIGN))  # its rollback point is inside the window
        train(each, 3)
    _save_state(trainer.state_dict(), tmp_path)  # what modular_trainable reports at step 16
    restarted = ModularTrainer(config)
    restarted.load_state_dict(checkpoints.load_valid(tune.Checkpoint(str(tmp_path)), _load_state))
    assert isinstance(restarted.applier.optimizer, torch.optim.SGD)
    for each in (reference, restarted):
        train(each, 4)  # the window ends at step 20
        assert each.applier.optimizer is each.optimizer  # AdamW again, its state as set aside
        assert same_state(each.optimizer.state_dict(), home)
        each.apply_command({"id": 2, "type": "rollback"})  # to step 13, inside the window
        assert isinstance(each.applier.optimizer, torch.optim.SGD)
        assert all(torch.equal(p, q) for p, q in zip(params(each), point, strict=True))
        train(each, 7)  # the window, moved by the 7 steps undone, ends again at step 27
        assert each.applier.optimizer is each.optimizer
        assert same_state(each.optimizer.state_dict(), home)
    assert all(torch.equal(p, q) for p, q in zip(params(restarted), params(reference), strict=True))


def test_batch_size_kick_accumulates_mini_batches() -> None:
    trainer = ModularTrainer(TrainConfig(**SMALL, batch_size=16))
    trainer.apply_command(kick(0, Kick("batch_size", {"factor": 3}, 5)))
    draws = trainer._batch_generator.get_state()
    trainer.train_step()
    reference = ModularTrainer(TrainConfig(**SMALL, batch_size=16))
    reference._batch_generator.set_state(draws)
    for _ in range(3):  # three mini-batches drawn for one optimizer step
        reference._batch()
    assert torch.equal(trainer._batch_generator.get_state(), reference._batch_generator.get_state())
    assert trainer.step == 1


# -- restart fallback: config changes ------------------------------------------------------------


def test_kick_config_change_for_the_built_in_trainable() -> None:
    config = {"lr": 1e-3, "weight_decay": 0.5, "batch_size": 64}
    assert kick_config_change(Kick("lr_multiply", {"factor": 10.0}, 100), config) == {"lr": 1e-2}
    assert kick_config_change(Kick("weight_decay", {"factor": 4.0}), config) == {
        "weight_decay": 2.0
    }
    assert kick_config_change(Kick("batch_size", {"factor": 4, "scale_lr": 0.5}, 10), config) == {
        "batch_size": 256,
        "lr": 2e-3,
    }
    switch = Kick("sgd_switch", {"lr": 1e-4, "momentum": 0.5}, 100)
    assert kick_config_change(switch, config) == {"optimizer": "sgd", "lr": 1e-4, "momentum": 0.5}
    with pytest.raises(ValueError, match="a grokfast kick cannot be a config change"):
        kick_config_change(Kick("grokfast"), config)
    with pytest.raises(ValueError, match="needs a mini-batch run; this one is full-batch"):
        kick_config_change(Kick("batch_size", {"factor": 2}, 10), {"lr": 1e-3})
    with pytest.raises(ValueError, match="lora_rank kick needs a model with a LoRA adapter"):
        kick_config_change(Kick("lora_rank"), config)


def test_generic_config_change_reads_the_usual_keys_and_refuses_what_it_cannot_know() -> None:
    config = {"lr": 0.1, "weight_decay": 0.0, "batch_size": 32}
    assert config_change(Kick("lr_multiply", {"factor": 3.0}, 10), config) == {
        "lr": pytest.approx(0.3)
    }
    assert config_change(Kick("batch_size", {"factor": 2}, 10), config) == {"batch_size": 64}
    with pytest.raises(ValueError, match=r"needs a number under 'weight_decay'.*got None"):
        config_change(Kick("weight_decay", {"factor": 3.0}), {"lr": 0.1})
    with pytest.raises(ValueError, match="a ortho_grad kick cannot be a config change"):
        config_change(Kick("ortho_grad"), config)
    assert config_change(Kick("lora_rank"), {**config, "lm_lora_rank": 8}) == {"lm_lora_rank": 32}
    with pytest.raises(ValueError, match=r"needs a model with a LoRA adapter.*lm_lora_rank=None"):
        config_change(Kick("lora_rank"), {**config, "lm_lora_rank": None})


def test_a_restart_under_a_changed_config_takes_the_new_values() -> None:
    trainer = ModularTrainer(TrainConfig(**SMALL, lr=1e-3))
    train(trainer, 5)
    state = trainer.state_dict()
    for change, optimizer, lr in (({"lr": 1e-2}, torch.optim.AdamW, 1e-2), ({}, None, 1e-3)):
        resumed = ModularTrainer(TrainConfig(**SMALL, **{"lr": 1e-3, **change}))
        resumed.load_state_dict(state)
        assert isinstance(resumed.optimizer, optimizer or torch.optim.AdamW)
        assert resumed.optimizer.param_groups[0]["lr"] == lr
        assert resumed.optimizer.state  # AdamW's moments came back
    switched = ModularTrainer(TrainConfig(**SMALL, optimizer="sgd", lr=1e-4, momentum=0.5))
    switched.load_state_dict(state)
    assert isinstance(switched.optimizer, torch.optim.SGD) and not switched.optimizer.state
    assert switched.step == 5

    kicked = ModularTrainer(TrainConfig(**SMALL, lr=1e-3))
    kicked.apply_command(kick(0, Kick("lr_multiply", {"factor": 2.0})))
    clash = ModularTrainer(TrainConfig(**SMALL, lr=5e-3))
    with pytest.raises(ValueError, match=r"changes \['lr'\] while kicks \['lr_multiply'\]"):
        clash.load_state_dict(kicked.state_dict())


def test_restart_needs_a_result_that_carries_a_checkpoint() -> None:
    trial = Trial("fallback", config={"lr": 0.1}, stub=True)
    with pytest.raises(ValueError, match="needs a result that carries a checkpoint"):
        restart_with_config(None, trial, {"step": 3}, {"lr": 0.2})  # type: ignore[arg-type]
    assert trial.config == {"lr": 0.1}


# -- benchmark harness: decide ↔ acknowledgements, in-process ------------------------------------


def test_the_bench_drives_grok_policy_which_rolls_back_a_harmful_kick() -> None:
    spec = RunSpec(p=23, train_fraction=0.5, weight_decay=1.0, seed=0, kind="policy")
    settings = BenchSettings(steps=400, eval_every=10, embed_dim=16, hidden_dim=64)
    decide = PolicyDecide(bench_policy(settings, kicks=[HARMFUL, Kick("grokfast")]))
    result = run_one(spec, settings, decide)
    assert result.memorized_step is not None and result.rollbacks == 1
    kick, rollback = result.kick_log[:2]
    assert " KICK kick lr_multiply {'factor': 1000.0}: plateau quiet" in kick
    assert " ROLLBACK rollback: lr_multiply kick at step " in rollback
    state = decide.policy.kicks.trial(spec.trial_id)
    assert state.harmful == {"lr_multiply"} and state.rollbacks == 1
    assert result.kicks == len([entry for entry in result.kick_log if " KICK " in entry])


def test_bench_main_prints_the_table_and_writes_every_run(tmp_path: Path, capsys) -> None:
    output = tmp_path / "bench.json"
    argv = ["--p", "23", "--train-fraction", "0.5", "--weight-decay", "1.0", "--steps", "200"]
    argv += ["--embed-dim", "16", "--hidden-dim", "64", "--workers", "1", "--output", str(output)]
    assert interventions_bench_main(argv) == 0
    table = capsys.readouterr().out
    assert table.startswith("| kind | grokked | median steps to grok |")
    report = json.loads(output.read_text())
    assert [row["kind"] for row in report["summary"]] == list(KIND_NAMES)
    assert len(report["runs"]) == len(KIND_NAMES)


# -- across processes, in a real local Ray cluster ---------------------------------------------


class _KickThenRollback(tune.Callback):
    """Plays the scheduler: posts a harmful kick from the driver at step ≥ 100, and a rollback
    50 steps after the trial acknowledged it; next to the kick, an intruder that knows the
    sweep's id but not its secret posts a rollback straight to the actor."""

    def __init__(self) -> None:
        self.channel = ControlChannel()
        self.posted: list[int] = []

    def on_trial_result(self, iteration: int, trials: list, trial: Trial, result: dict) -> None:
        step, acked = result["step"], result["control/acked_id"]
        if not self.posted and step >= 100:
            self.channel.post(trial.trial_id, kick(0))
            self.posted.append(0)
            intruder = SweepKey(self.channel.key.sweep_id, b"not-the-sweep-secret")
            forged = signed({"id": 9, "type": "rollback"}, trial.trial_id, intruder)
            ray.get_actor(CHANNEL_NAME).post.remote(trial.trial_id, forged)
        elif self.posted == [0] and acked == 0 and step >= result["control/applied_step"] + 50:
            self.channel.post(trial.trial_id, Command(1, "rollback"))
            self.posted.append(1)


@pytest.mark.slow
def test_a_tune_trial_applies_a_kick_posted_from_the_driver_and_rolls_back(
    local_ray, tmp_path: Path
) -> None:
    poster = _KickThenRollback()
    config = {**SMALL, "p": 47, "eval_every": 25, "max_steps": 400, "control": True}
    tuner = tune.Tuner(
        modular_trainable,
        param_space={**config, CONTROL_KEY: poster.channel.key},
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0, callbacks=[poster]),
    )
    (result,) = tuner.fit()
    assert result.error is None
    rows = result.metrics_dataframe.sort_values("step").to_dict("records")
    assert [r["step"] for r in rows] == list(range(25, 401, 25))  # monotone through it all

    kicked = next(r for r in rows if r["control/acked_id"] == 0)
    applied = kicked["control/applied_step"]
    assert 100 <= applied < kicked["step"] and applied % 25 == 0  # polled right after a report
    assert all(r["control/acked_id"] == -1 for r in rows if r["step"] <= applied)
    before = next(r for r in rows if r["step"] == applied)["train_loss"]
    assert math.isnan(kicked["train_loss"]) or kicked["train_loss"] > 10 * before
    assert kicked["control/kicks_active"] == 1
    assert kicked["should_checkpoint"]  # the snapshot is on storage with the first ack

    rolled = next(r for r in rows if r["control/acked_id"] == 1)
    assert rolled["control/rollbacks"] == 1 and rolled["control/kicks_active"] == 0
    assert rolled["control/applied_step"] >= applied + 50
    assert rolled["train_loss"] < before  # 25 steps on from the pre-kick weights
    assert rows[-1]["train_loss"] < rolled["train_loss"]  # and training goes on
    assert rows[-1]["control/rollbacks"] == 1  # the forged rollback was not applied
    assert rows[0]["control/refused"] == 0 and rows[-1]["control/refused"] == 1
    assert rows[-1]["control/acked_id"] == 1


def _counting(config: dict) -> None:
    """A plain function trainable that never polls: reports its lr, checkpoints every 2 steps."""
    step = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            step = int((Path(directory) / "step").read_text())
    while step < 10:
        step += 1
        metrics = {"step": step, "lr": config["lr"]}
        if step % 2 == 0:
            with tempfile.TemporaryDirectory() as directory:
                (Path(directory) / "step").write_text(str(step))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
        else:
            tune.report(metrics)


class _RestartOnce(FIFOScheduler):
    """Doubles lr by restart from step 3 on, at the first result that carries a checkpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.refused: list[str] = []

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        if result["step"] >= 3 and trial.config["lr"] == 0.1:
            new_config = {**trial.config, "lr": 0.2}
            try:
                return restart_with_config(tune_controller, trial, result, new_config, "lr=0.2")
            except ValueError as error:  # no checkpoint in this result: keep the change pending
                self.refused.append(str(error))
        return super().on_trial_result(tune_controller, trial, result)


@pytest.mark.slow
def test_restart_fallback_resumes_a_plain_trainable_under_its_new_config(
    local_ray, tmp_path: Path
) -> None:
    scheduler = _RestartOnce()
    tuner = tune.Tuner(
        _counting,
        param_space={"lr": 0.1},
        tune_config=tune.TuneConfig(scheduler=scheduler),
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
    )
    (result,) = tuner.fit()
    assert result.error is None
    assert result.config["lr"] == 0.2
    history = [(r["step"], r["lr"]) for r in result.metrics_dataframe.to_dict("records")]
    # Refused at 3 (no checkpoint), restarted at 4 from its own checkpoint, no step repeated.
    assert history == [(s, 0.1) for s in range(1, 5)] + [(s, 0.2) for s in range(5, 11)]
    assert len(scheduler.refused) == 1 and "carries a checkpoint" in scheduler.refused[0]


class _SlowMailbox:
    """A mailbox that answers its first ``take`` late, as an overloaded cluster does."""

    def __init__(self, key: SweepKey) -> None:
        self.key, self.calls = key, 0

    def take(self, trial_id: str, *reader: Any) -> list[tuple[int, dict[str, Any]]]:
        self.calls += 1
        if self.calls == 1:
            time.sleep(2.0)
        return [
            (self.calls, signed({"id": self.calls - 1, "type": "rollback"}, trial_id, self.key))
        ]


def test_a_slow_channel_delays_commands_but_neither_fails_nor_loses_them(local_ray) -> None:
    name = "slow-mailbox-test"
    slow = ray.remote(_SlowMailbox).options(name=name, num_cpus=0).remote(KEY)
    client = ControlClient("trial", poll_every=1, key=KEY, name=name, timeout_s=0.2)
    assert client.poll(0) == []  # no answer in time: nothing yet, no error
    step, deadline = 1, time.monotonic() + 60
    while (commands := client.poll(step)) == [] and time.monotonic() < deadline:
        step += 1
    assert commands == [Command(0, "rollback")]  # the late answer, not lost
    assert client.poll(step + 1) == [Command(1, "rollback")]
    ray.kill(slow)


def test_forged_commands_posted_to_the_actor_are_refused_and_the_genuine_one_applied_once(
    local_ray, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="grokschedule.adapters.control_channel")
    name, trial = "auth-channel-test", "trial_00000"
    channel = ControlChannel(name=name)
    channel.post(trial, kick(0, BENIGN))  # genuine; makes the actor
    actor = ray.get_actor(name)
    genuine = signed(kick(0, BENIGN), trial, channel.key)  # the bytes an eavesdropper would see
    intruder = SweepKey.generate()
    ray.get(
        [
            actor.post.remote(trial, {**genuine, "command": kick(1)}),  # harmful, old MAC
            actor.post.remote(trial, signed(kick(2), trial, intruder)),  # another sweep's key
            actor.post.remote(trial, genuine),  # replayed
            actor.post.remote(trial, signed(kick(3), "trial_00001", channel.key)),  # not ours
        ]
    )
    config = TrainConfig(**{**SMALL, "max_steps": 20, "weight_decay": 1.0})
    trainer = ModularTrainer(config)
    client = ControlClient(trial, poll_every=1, key=channel.key, name=name)
    for _ in trainer.run(client.poll):
        pass
    assert trainer.control.acked_id == 0 and trainer.control.applied_step == 0
    (active,) = trainer.applier.active  # the benign kick, once; the harmful one never
    assert active.kick == BENIGN and active.start == 0
    group = trainer.optimizer.param_groups[0]
    assert group["lr"] == config.lr and group["weight_decay"] == 2 * config.weight_decay
    assert client.metrics() == {REFUSED: 4}
    warnings = [r.getMessage() for r in caplog.records if "refused a command" in r.getMessage()]
    assert len(warnings) == 4
    for reason in (BAD_SIGNATURE, OTHER_SWEEP, REPLAYED, UNKNOWN_TRIAL):
        assert sum(f"not applied: {reason} (" in w for w in warnings) == 1, reason
    assert all(f"trial {trial} (sweep {channel.key.sweep_id})" in w for w in warnings)
    ray.kill(actor)


def test_a_command_a_dead_worker_polled_comes_back_once_to_the_worker_that_resumes(
    local_ray, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="grokschedule.adapters.control_channel")
    name, trial = "redelivery-test", "trial_00000"
    channel = ControlChannel(name=name)
    for command_id in (0, 1):
        channel.post(trial, kick(command_id, BENIGN))

    def worker(acked_id: int) -> ControlClient:  # a (re)started worker, restored at acked_id
        return ControlClient(trial, poll_every=1, key=channel.key, name=name, acked_id=acked_id)

    first = worker(-1)
    assert [c.id for c in first.poll(0)] == [0, 1]
    first.checkpointed(0)  # a checkpoint holds 0; the worker dies before one holds 1
    assert first.poll(1) == []  # each client gets a command once
    second = worker(0)  # resumed from that checkpoint: 0 is done, 1 is not
    assert [c.id for c in second.poll(0)] == [1]
    second.checkpointed(1)
    assert second.poll(1) == [] and worker(1).poll(0) == []  # forgotten once checkpointed
    genuine = signed(kick(1, BENIGN), trial, channel.key)
    ray.get(ray.get_actor(name).post.remote(trial, genuine))  # a replay is still refused
    third = worker(1)
    assert third.poll(0) == [] and third.metrics() == {REFUSED: 1}
    assert worker(1).poll(0) == []  # and dropped once refused: not refused again
    assert first.metrics() == second.metrics() == {REFUSED: 0}
    refusals = [r.getMessage() for r in caplog.records if "refused a command" in r.getMessage()]
    assert len(refusals) == 1 and f"not applied: {REPLAYED} (" in refusals[0]
    ray.kill(ray.get_actor(name))
