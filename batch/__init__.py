"""Work over the lake and the log: the backfill, feature history, the nightly retrain (nightly/), the online learner (online/), evaluation (evaluate/), attribution of served lists."""

__all__ = ["backfill", "event_examples", "nightly", "online", "evaluate", "attribution", "catalogue", "feature_history", "shown_lists"]  # its public modules
