"""Features as code: names, Feast definitions, the one computation for stream and batch, model inputs, point-in-time joins, online writes."""

__all__ = ["names", "definitions", "compute", "store", "model_inputs", "live", "point_in_time", "online_writer", "redis_layout"]  # its public modules
