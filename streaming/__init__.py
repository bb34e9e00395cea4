"""Events in: the event contract, lateness, producers, validating consumers, the DLQ, the lake, replay; job/ is the PyFlink feature job."""

__all__ = ["events", "lateness", "producer", "consumer", "dlq", "lake", "topics", "replay", "ingest", "pacing", "synthetic", "job", "vocabulary", "log_files", "ordering", "synthetic_log", "live_attribution", "attribution_counts"]  # its public modules
