"""`recsys` commands for the recommendation API."""

from __future__ import annotations

import argparse

from infra.cli.console import console
from infra.settings import Settings


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from serving import runner

    if args.host or args.port:
        update = {k: v for k, v in (("host", args.host), ("port", args.port)) if v}
        settings = settings.model_copy(update={"serving": settings.serving.model_copy(update=update)})
    url = runner.base_url(settings)
    if args.action == "run":
        console.print(f"serving on {url} (dashboard {url}/ui, API docs {url}/docs); Ctrl-C stops")
        runner.run(settings)
        return 0
    if args.action == "start":
        st = runner.start(settings)
        console.print(f"[green]✓[/] API running (pid {st.pid}) on {url}; dashboard {url}/ui; "
                      f"log {settings.paths.log_dir / 'api.log'}")
        return 0
    if args.action == "stop":
        console.print("API stopped" if runner.stop(settings) else "API was not running")
        return 0
    pid = runner.running_pid(settings)
    if pid is None:
        console.print(f"[red]●[/] API: stopped ({url})")
        return 3
    import httpx

    try:
        ready = httpx.get(url + "/readyz", timeout=2).json()
    except (httpx.HTTPError, ValueError) as e:
        console.print(f"[yellow]●[/] API: process {pid} alive but {url} does not answer ({e})")
        return 3
    colour = "green" if ready["ready"] else "yellow"
    console.print(f"[{colour}]●[/] API: running (pid {pid}) on {url}; model {ready['model_version'] or 'none'}"
                  + ("" if ready["ready"] else f"; not ready: {'; '.join(ready['problems'])}"))
    return 0 if ready["ready"] else 3


def cmd_recommend(settings: Settings, args: argparse.Namespace) -> int:
    """Ask the running API, as a client would, and show the list with the catalogue's titles."""
    import httpx
    from rich.table import Table

    from batch.catalogue import shown_categories
    from serving import runner

    url = runner.base_url(settings)
    try:
        response = httpx.get(f"{url}/recommendations/{args.user_id}", params={"k": args.k, "details": True}, timeout=10)
    except httpx.HTTPError as e:
        raise ConnectionError(f"the API at {url} does not answer ({e}): start it with `recsys serve start`") from e
    body = response.json()
    if response.status_code != 200:
        raise RuntimeError(f"the API answered {response.status_code}: {body.get('detail', body)}")
    table = Table(title=f"user {body['user_id']} · model {body['model_version']}"
                        + (" · cold start" if body["cold_start"] else ""))
    for column in ("#", "item", "title", "category", "score", "sources"):
        table.add_column(column, overflow="fold")
    for n, item in enumerate(body["items"], start=1):
        table.add_row(str(n), item["item_id"], item.get("title") or "", shown_categories(item.get("category")),
                      f"{item['score']:.3f}", ", ".join(item["sources"]))
    console.print(table)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="the recommendation API: run in the foreground, or start|stop|status in the background")
    serve.add_argument("action", nargs="?", default="run", choices=["run", "start", "stop", "status"])
    serve.add_argument("--host", help="default serving.host")
    serve.add_argument("--port", type=int, help="default serving.port")
    serve.set_defaults(run=cmd_serve)
    recommend = sub.add_parser("recommend", help="a user's recommendations from the running API, with titles")
    recommend.add_argument("user_id")
    recommend.add_argument("--k", type=int, default=10)
    recommend.set_defaults(run=cmd_recommend)
