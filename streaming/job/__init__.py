"""The PyFlink feature job: its graph, Python functions, feature writer, metrics files and background process."""

__all__ = ["feature_job", "feature_functions", "feature_writer", "stream_metrics", "stream_runner"]  # its public modules
