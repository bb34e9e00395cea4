"""Events in: the event contract, producers, validating consumers, replay and streaming jobs."""
