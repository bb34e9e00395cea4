"""``recsys``: the one command-line entry point of the engine (imported by nothing).

Each module holds the thin commands of one area and registers them (``register``); a command
parses its arguments and calls the library function that does the work, the same one the
benchmarks call.
"""

from __future__ import annotations

import argparse
import os
from typing import Sequence

from infra.cli import events, experiments, features, serve, stack, training
from infra.cli.console import console
from infra.noise import quiet_third_party_noise
from infra.settings import load_settings

AREAS = (stack, events, features, training, serve, experiments)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys", description="the streaming recommendation engine")
    parser.add_argument("--config", help="YAML settings file (default: $RECSYS_CONFIG or ./recsys.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    for area in AREAS:
        area.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    quiet_third_party_noise()
    args = build_parser().parse_args(argv)
    if args.config:
        os.environ["RECSYS_CONFIG"] = args.config
    try:
        return args.run(load_settings(), args)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
    except (ConnectionError, RuntimeError, ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2


__all__ = ["build_parser", "main"]
