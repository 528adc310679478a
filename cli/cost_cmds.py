"""`dstack cost`: what the runs cost, estimated from list prices."""

from __future__ import annotations

from typing import Annotated

import typer

from dstack.cli import output
from dstack.cli.options import JsonOpt, Profile, open_context

cost_app = typer.Typer()
"""The cost command; the app adds it at its top level."""


@cost_app.command()
def cost(
    since: Annotated[str, typer.Option(
        "--since", metavar="DURATION",
        help="Runs submitted this long ago or later, e.g. 7d, 12h, 90m.")] = "7d",
    by: Annotated[str, typer.Option(
        "--by", metavar="user|workflow|day",
        help="Group by user (who started the run), workflow or day (UTC).")] = "workflow",
    profile: Profile = None,
    json_out: JsonOpt = False,
) -> None:
    """What the runs in the profile's store cost: each cloud instance's list price times the
    time from its creation to its deletion. An estimate, not your cloud bill."""
    import time

    from dstack.durations import format_elapsed
    from dstack.run.billing import format_cost
    from dstack.run.cost import check_grouping, cost_report, since_time

    now = time.time()
    start = since_time(since, now)
    check_grouping(by)
    ctx = open_context(profile)
    report = cost_report(ctx.store, start, by, now, ctx.listing_cache)
    if json_out:
        output.print_json(report)
        return
    output.table([by.upper(), "RUNS", "PRICED", "BILLED", "COST"], [
        [g["key"], str(g["runs"]), str(g["priced"]),
         format_elapsed(g["billed_s"]) if g["priced"] else "",
         format_cost(g["cost"] if g["priced"] else None)]
        for g in [*report["groups"], report["total"]]
    ])
    running = report["total"]["running"]
    if running:
        print(f"{running} instance(s) still up: their cost so far, growing")
    print(f"since {report['since']}. {report['estimate']}")
