"""The event-file arguments shared by `recsys replay` and `recsys evaluate`."""

from __future__ import annotations

import argparse

from infra.settings import Settings


def load_event_file(settings: Settings, args: argparse.Namespace,
                    max_in_memory: int | None = None):  # noqa: ANN202 - streaming.replay.LoadedEvents
    """The file's events, its own event names mapped by the settings' aliases and --event-types.
    ``max_in_memory``: ordered holding at most that many events (a larger file sorts on disk)."""
    from streaming.replay import load_events, parse_columns
    from streaming.vocabulary import EventVocabulary, parse_event_types

    vocabulary = EventVocabulary.from_settings(settings, parse_event_types(args.event_types))
    return load_events(args.path, columns=parse_columns(args.columns), delimiter=args.delimiter,
                       event_type=args.event_type, time_unit=args.time_unit, aliases=vocabulary.aliases,
                       progress=not getattr(args, "quiet", False),
                       max_in_memory=max_in_memory,
                       spill_dir=settings.paths.spill_dir)


def event_file_arguments(parser: argparse.ArgumentParser, optional: bool = False) -> None:
    """The replay formats: u.data, or any CSV mapped with --columns."""
    help_path = ("u.data (user item rating unix_ts, tab-separated), or a CSV/TSV, JSON lines or Parquet file "
                 "(gzip too) with --columns")
    if optional:
        parser.add_argument("path", nargs="?", help=f"{help_path} (default: ml100k_path from the settings)")
    else:
        parser.add_argument("path", help=help_path)
    parser.add_argument("--columns", help="event fields -> header names (user_id=userId,item_id=movieId,value=rating,"
                        "event_time=timestamp) or, for a file without a header, column numbers "
                        "(user_id=0,item_id=1,event_type=3,event_time=4)")
    parser.add_argument("--delimiter", help="field delimiter (default: tab for u.data, comma for CSV)")
    parser.add_argument("--event-type", default="rating", help="event type when no column maps it")
    parser.add_argument("--event-types", help="your event names -> the engine's types, e.g. pv=view,buy=purchase,"
                        "cart=add_to_cart,fav=like (added to the events.aliases setting)")
    parser.add_argument("--time-unit", default="auto", choices=["auto", "s", "ms", "us", "ns"],
                        help="unit of epoch times (auto: guessed from their size, and said); ISO-8601 text also works")
