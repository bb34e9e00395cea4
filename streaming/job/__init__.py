"""The PyFlink jobs: the feature job and the live attribution job; their graphs, Python functions and their steps, writers, metrics files and background processes."""

__all__ = ["feature_job", "feature_functions", "micro_batch", "dead_letters", "lake_buffer", "user_updates",
           "item_updates", "state_cache", "feature_writer", "stream_metrics", "stream_runner", "settings_handoff",
           "attribution_job", "attribution_function", "attribution_runner"]  # its public modules
