"""The application: the demo, the sweep spec and the runner behind ``grokschedule sweep``."""
