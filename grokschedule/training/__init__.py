"""Training with torch and DeepSpeed, no Ray: the modular trainer, the DeepSpeed engine and tasks,
kicks applied to an optimizer, in-training probes and verified checkpoint files."""
