"""The recommendation API: candidates and ranking, the served model and its hot swap, online feature reads, the dashboard."""

__all__ = ["app", "recommender", "served_model", "hot_swap", "item_snapshot", "online_features", "quality", "metrics", "runner"]  # its public modules
