"""Benchmarks behind BENCHMARKS.md (`grokschedule bench NAME`): banks, replays, the predictor fit,
load, soak, probes, interventions, the DeepSpeed trainer; they may use every layer."""
