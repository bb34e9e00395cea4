"""The online learner: minute-level training on the events stream, and its background process."""

__all__ = ["learn", "online_learner", "learn_runner"]  # its public modules
