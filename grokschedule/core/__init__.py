"""The decision core: numpy only, no Ray, torch, DeepSpeed or MLflow, so every decision can be
tested and replayed offline. Metric contract → signals → phases → predictor → policy → decision
(and its command for the trainer) → the sweep's summary and each trial's verdict.
"""
