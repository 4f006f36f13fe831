"""DeepSpeed-aware Ray Train trainer: ``deepspeed_trainable`` runs one trial as a Train V2
``TorchTrainer`` under Tune; ``DeepSpeedRun`` is one worker's engine, metrics, kicks and
checkpoints. Importing this package does not import DeepSpeed or Ray Train; the modules do."""
