"""Tables people read at the terminal (shared by `recsys topics` and the demo)."""

from __future__ import annotations

from rich.table import Table

from infra.settings import Settings
from streaming.topics import scan_topic


def topics_table(settings: Settings) -> Table:
    """Records per topic and partition, and the DLQ reasons, read from the broker."""
    table = Table("topic", "records", "per partition", "DLQ reasons")
    for topic in (settings.topics.events, settings.topics.dlq):
        scan = scan_topic(settings, topic)
        reasons = ", ".join(f"{k}={v}" for k, v in scan.reasons.most_common())
        table.add_row(topic, f"{scan.records:,}", str(dict(sorted(scan.per_partition.items()))), reasons or "-")
    return table
