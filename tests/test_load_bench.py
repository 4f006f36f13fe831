from grokschedule.bench.load import run_load


def test_state_per_trial_does_not_grow_with_run_length() -> None:
    result = run_load(trials=20, reports=600, checkpoints=[200, 600])
    short, long = result["checkpoints"]
    assert long["state_kib_per_trial"] <= short["state_kib_per_trial"] * 1.05
    assert long["p50_ms"] > 0
