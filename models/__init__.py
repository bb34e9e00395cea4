"""The model library (free of the app's settings): TorchRec ranking model, candidate ranker, similarity, id tables, registry, deltas, baselines."""

__all__ = ["config", "ranking", "train", "incremental", "list_ranker", "cross_features", "similarity", "id_table", "ids", "registry", "delta", "distributed", "evaluate", "synthetic", "baselines", "categories"]  # its public modules
