"""The decision core: numpy only, no Ray, torch, DeepSpeed or MLflow, so every decision can be
tested and replayed offline. Metric contract → signals → phases → predictor → policy → decision.
"""
