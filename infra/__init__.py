"""The ground floor: settings, background processes, the local services, the Kafka client factory, output noise; cli/ is the roof."""

__all__ = ["settings", "processes", "services", "kafka_clients", "noise", "periodic", "schedule", "chromium", "cli"]  # its public modules
