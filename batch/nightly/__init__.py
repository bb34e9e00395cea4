"""The nightly retrain: point-in-time training data, training lists, TorchRec training, the evaluated version."""

__all__ = ["retrain", "training_data", "training_lists", "train_worker"]  # its public modules
