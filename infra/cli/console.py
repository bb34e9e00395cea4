"""The one console every `recsys` command prints to."""

from rich.console import Console

console = Console()
