"""The recommendation API: candidates and ranking, the served model and its hot swap, online feature reads, the impression log, the dashboard."""

__all__ = ["app", "recommender", "served_model", "hot_swap", "item_snapshot", "online_features", "quality", "metrics", "runner", "impressions", "impression_shipper", "item_details", "experiments", "arm_comparison", "rollout_guard", "guard_simulation", "rollout"]  # its public modules
