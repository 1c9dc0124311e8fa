"""`podium status`: one table of nodes, engine and gateway replicas, read from Prometheus."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from podium.errors import InvalidInput, PodiumError
from podium.monitoring.query import ApplianceStatus, PrometheusClient, collect_status
from podium.render import REPO
from podium.stack import load_stack
from podium.stack.model import Stack

Versions = Mapping[str, Mapping[str, str]]


def _state(up: bool) -> str:
    return "[green]up[/]" if up else "[bold red]down[/]"


def _qps(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}/s"


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:.0f} ms"


# Scrape jobs named after what they scrape, not after the component that installs it.
JOB_COMPONENT = {"prometheus": "monitoring", "dcgm": "gpu"}


def status_table(status: ApplianceStatus, versions: Versions | None = None) -> Table:
    """The rich table `podium status` prints.

    status: from podium.monitoring.query.collect_status.
    versions: host → component → version recorded at apply; shown per row where known.
    """
    versions = versions or {}
    table = Table(title=f"Podium status (from {status.prometheus})", title_justify="left")
    for name in ("kind", "name", "node", "state", "QPS", "TTFT p95", "version"):
        table.add_column(name, justify="right" if name in ("QPS", "TTFT p95") else "left")
    for n in status.nodes:
        recorded = ", ".join(f"{c} {v}" for c, v in sorted(versions.get(n.node, {}).items()))
        table.add_row("node", n.node, n.node, _state(n.up), "", "", recorded)
    for e in status.engines:
        state = _state(e.up)
        if e.healthy_at_gateway is False:
            state += " [yellow](out of rotation)[/]"
        # A model-wide figure is marked so nobody reads it as this replica's own.
        suffix = " (model)" if e.figures_from == "model" else ""
        table.add_row(
            e.job,
            f"{e.model} #{e.replica}" if e.replica else e.model,
            e.node,
            state,
            _qps(e.qps) + suffix if e.qps is not None else "–",
            _ms(e.ttft_p95_seconds) + suffix if e.ttft_p95_seconds is not None else "–",
            versions.get(e.node, {}).get(e.job, ""),
        )
    for g in status.gateways:
        table.add_row(
            "gateway",
            f"replica {g.replica}" if g.replica else g.instance,
            g.node,
            _state(g.up),
            _qps(g.qps),
            _ms(g.ttft_p95_seconds),
            versions.get(g.node, {}).get("gateway", ""),
        )
    for o in status.others:
        table.add_row(
            o.job,
            o.instance,
            o.node,
            _state(o.up),
            "",
            "",
            versions.get(o.node, {}).get(JOB_COMPONENT.get(o.job, o.job), ""),
        )
    return table


def show_status(
    prometheus_url: str,
    *,
    versions: Versions | None = None,
    as_json: bool = False,
    console: Console | None = None,
    window: str = "2m",
) -> ApplianceStatus:
    """Query Prometheus and print the status table (or JSON); returns the data shown."""
    status = collect_status(PrometheusClient(prometheus_url), window=window)
    out = console or Console(highlight=False)
    if as_json:
        # Plain print: rich would wrap or colour the JSON.
        print(json.dumps(status.to_dict(versions), indent=2, sort_keys=True))
    else:
        out.print(status_table(status, versions))
    return status


def load_named_stack(stack: str) -> Stack:
    """STACK as a folder or stack.yaml path, else the name of a folder under stacks/."""
    path = Path(stack)
    if not path.exists() and "/" not in stack:
        path = REPO / "stacks" / stack
    return load_stack(path if path.exists() else stack)


def stack_prometheus_url(stack: Stack) -> str:
    """http://<monitoring node address>:<port> of the stack's Prometheus."""
    if stack.monitoring is None:
        raise InvalidInput(
            f"stack {stack.name} declares no monitoring: section, so it has no Prometheus; "
            "add one or pass --prometheus URL"
        )
    address = stack.node(stack.monitoring.node).address
    return f"http://{address}:{stack.monitoring.port}"


def recorded_versions(stack: Stack, console: Console) -> dict[str, dict[str, str]]:
    """host → component → version as recorded on the hosts; empty, with a note, if unreadable."""
    from pyinfra.api.exceptions import PyinfraError

    from podium.up import recorded_states

    # paramiko logs a traceback for every host that does not answer; the note below says it.
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    try:
        states = recorded_states(stack)
    except (PodiumError, PyinfraError) as exc:
        # A node that is down is what status is for: show the rest without versions.
        console.print(f"[yellow]note:[/] recorded versions not shown: {exc}", markup=True)
        return {}
    return {
        host: {name: c.version for name, c in sorted(state.components.items())}
        for host, state in sorted(states.items())
    }


def status(
    stack: str | None = typer.Argument(
        None,
        metavar="STACK",
        help="Stack folder, stack.yaml or name under stacks/; its Prometheus is used unless "
        "--prometheus is given, and its hosts' recorded versions are shown.",
    ),
    prometheus: str | None = typer.Option(
        None, "--prometheus", help="Prometheus URL, e.g. http://10.77.0.10:9090."
    ),
    window: str = typer.Option("2m", "--window", help="Rate window for QPS and TTFT p95."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Show nodes, engine replicas and gateway replicas: up or down, QPS and TTFT p95.

    Example: podium status stacks/lab --json
    """
    versions: dict[str, dict[str, str]] = {}
    if stack is not None:
        loaded = load_named_stack(stack)
        prometheus = prometheus or stack_prometheus_url(loaded)
        versions = recorded_versions(loaded, Console(stderr=True, highlight=False))
    if prometheus is None:
        raise InvalidInput(
            "no Prometheus address is known; give a STACK or pass --prometheus URL, "
            "e.g. --prometheus http://10.77.0.10:9090"
        )
    show_status(prometheus, versions=versions, as_json=as_json, window=window)


def register(app: typer.Typer) -> None:
    """Add `podium status` to the root app."""
    app.command("status")(status)
