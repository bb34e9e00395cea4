"""The PyFlink feature job: its graph, Python functions and their steps, feature writer, metrics files and background process."""

__all__ = ["feature_job", "feature_functions", "micro_batch", "dead_letters", "lake_buffer", "user_updates",
           "item_updates", "state_cache", "feature_writer", "stream_metrics", "stream_runner"]  # its public modules
