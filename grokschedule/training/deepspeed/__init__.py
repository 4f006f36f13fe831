"""One worker's DeepSpeed run: its configuration, the engine and the tasks it trains."""
