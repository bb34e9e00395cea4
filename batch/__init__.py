"""Work over the lake and the log: the backfill, the nightly retrain (nightly/), the online learner (online/), evaluation (evaluate/)."""

__all__ = ["backfill", "event_examples", "nightly", "online", "evaluate"]  # its public modules
