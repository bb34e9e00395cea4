"""Evaluation: the prequential replay with its baselines, the served-pipeline replay, reports, the demo's held-out day."""

__all__ = ["evaluation", "prequential", "prequential_report", "served_replay", "baselines", "catalogue_churn", "holdout"]  # its public modules
