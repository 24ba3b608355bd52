"""trace-worker: Perfetto traces from Micromegas telemetry, on demand. Importing this starts nothing."""

__version__ = "0.1.0"
