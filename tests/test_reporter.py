"""The console table shows each trial's P(grok) and ETA from the scheduler's predictor."""

from __future__ import annotations

import io

from ray.tune.experiment import Trial

from tune_plugins import GrokConsoleReporter, GrokScheduler


def _feed(scheduler: GrokScheduler, trial: Trial, curve, until: int) -> None:
    for i, step in enumerate(curve["step"]):
        if step > until:
            break
        result = {name: values[i] for name, values in curve.items()}
        scheduler.on_trial_result(None, trial, result)  # type: ignore[arg-type]
        trial.run_metadata.last_result = result


def test_table_has_p_grok_and_eta_columns(recorded_curves) -> None:
    scheduler = GrokScheduler(metric="val_acc", mode="max", max_t=3000)
    grokker = Trial("replay", config={}, trial_id="g0001", stub=True)
    fresh = Trial("replay", config={}, trial_id="f0001", stub=True)
    _feed(scheduler, grokker, recorded_curves["grokker_p47_wd1"], until=1000)
    _feed(scheduler, fresh, recorded_curves["slow_grokker_p59_f04"], until=50)
    stream = io.StringIO()
    reporter = GrokConsoleReporter(scheduler, stream=stream)
    table = reporter.table([grokker, fresh]).splitlines()
    assert "P(grok)" in table[0] and "ETA" in table[0]
    decision = scheduler.last_decision("g0001")
    assert decision is not None and "p_grok" in decision.signals
    assert f"{decision.signals['p_grok']:.2f}" in table[1]
    if "eta_steps" in decision.signals:
        assert f"{decision.signals['eta_steps']:.0f}" in table[1]
    assert "~" in table[2]  # before memorization: the heuristic score, marked as such
