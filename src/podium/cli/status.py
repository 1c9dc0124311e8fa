"""`podium status`: one table of nodes, engine and gateway replicas, read from Prometheus."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from podium.errors import InvalidInput, PodiumError
from podium.monitoring.query import ApplianceStatus, PrometheusClient, collect_status
from podium.plan.actions import Action
from podium.plan.drift import NodeDrift
from podium.plan.state import HostState
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


# Longer versions (Debian revisions, build labels) are cut so a row keeps to one line.
VERSION_WIDTH = 14


def short_version(version: str | None) -> str:
    if not version:
        return "–"
    return version if len(version) <= VERSION_WIDTH else version[: VERSION_WIDTH - 1] + "…"


def _node_release(node: str, versions: Versions, releases: Mapping[str, NodeDrift]) -> str:
    """A node row's last cell: its release (or how many components it recorded) and drift; the
    versions themselves are in the releases table, one line each."""
    drift = releases.get(node)
    if drift is not None and drift.release is not None:
        cell = f"release {drift.release.number}"
    elif versions.get(node):
        cell = f"{len(versions[node])} recorded"
    else:
        return ""
    if drift is not None and drift.drifted:
        cell += f" [yellow]drift {len(drift.drifted)}[/]"
    return cell


def status_table(
    status: ApplianceStatus, versions: Versions | None = None, releases: Sequence[NodeDrift] = ()
) -> Table:
    """The rich table `podium status` prints.

    status: from podium.monitoring.query.collect_status.
    versions: host → component → version recorded at apply; shown per row where known.
    releases: from podium.plan.drift.node_drift; each node row shows its release and drift.
    """
    versions = versions or {}
    by_node = {r.host: r for r in releases}
    table = Table(title=f"Podium status (from {status.prometheus})", title_justify="left")
    for name in ("kind", "name", "node", "state", "QPS", "TTFT p95", "version"):
        table.add_column(name, justify="right" if name in ("QPS", "TTFT p95") else "left")
    for n in status.nodes:
        table.add_row("node", n.node, n.node, _state(n.up), "", "", _node_release(n.node, versions, by_node))
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


def release_table(releases: Sequence[NodeDrift]) -> Table:
    """One line per node and component: the version the node recorded and what the stack plans
    there now, drift marked, under a line with the node's current release; cells are cut, never
    wrapped, so it reads at 80 columns."""
    table = Table(title="Releases and drift", title_justify="left")
    # Widest cells: 10 + 17 + 14 + 26, with borders and padding 80 columns.
    for name, width in (("node", 10), ("component", 17), ("recorded", VERSION_WIDTH), ("planned", 26)):
        table.add_column(name, no_wrap=True, overflow="ellipsis", max_width=width)
    for node in releases:
        rows = []
        if node.release is not None:
            when = node.release.created_at[:16].replace("T", " ")
            rows.append(("release", str(node.release.number), f"[dim]{when}[/]"))
        for c in node.components:
            if not c.drift:
                planned = "[dim]same[/]"
            elif c.drift in ("upgrade", "downgrade"):
                planned = f"[yellow]{short_version(c.planned)} ({c.drift})[/]"
            else:
                planned = f"[yellow]{c.drift}[/]"
            rows.append((c.component, short_version(c.recorded), planned))
        for i, row in enumerate(rows):
            table.add_row(node.host if i == 0 else "", *row, end_section=i == len(rows) - 1)
    return table


def show_status(
    prometheus_url: str,
    *,
    versions: Versions | None = None,
    releases: Sequence[NodeDrift] = (),
    as_json: bool = False,
    console: Console | None = None,
    window: str = "2m",
) -> ApplianceStatus:
    """Query Prometheus and print the status table (or JSON); returns the data shown."""
    status = collect_status(PrometheusClient(prometheus_url), window=window)
    out = console or Console(highlight=False)
    if as_json:
        data = status.to_dict(versions)
        data["releases"] = [r.to_dict() for r in releases]
        # Plain print: rich would wrap or colour the JSON.
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        out.print(status_table(status, versions, releases))
        if releases:
            out.print(release_table(releases))
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


def recorded_nodes(stack: Stack, console: Console) -> tuple[dict[str, dict[str, str]], list[NodeDrift]]:
    """host → component → version as recorded on the hosts, and each host's release and drift;
    empty, with a note, if unreadable."""
    from pyinfra.api.exceptions import PyinfraError

    from podium.drivers.pyinfra_runner import read_node_files
    from podium.inventory import connection
    from podium.plan.drift import node_drift, parse_release
    from podium.plan.state import RELEASE_RECORD, STATE_PATH, parse_state
    from podium.up import require_machines

    # paramiko logs a traceback for every host that does not answer; the note below says it.
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    try:
        require_machines(stack)
        texts = read_node_files([(n, connection(stack, n)) for n in stack.node_names], [STATE_PATH, RELEASE_RECORD])
        states = {h: parse_state(t[STATE_PATH], f"{h}:{STATE_PATH}") for h, t in texts.items() if STATE_PATH in t}
    except (PodiumError, PyinfraError) as exc:
        # A node that is down is what status is for: show the rest without versions.
        console.print(f"[yellow]note:[/] recorded versions not shown: {exc}", markup=True)
        return {}, []
    releases = {h: parse_release(t.get(RELEASE_RECORD, "")) for h, t in texts.items()}
    versions = {
        host: {name: c.version for name, c in sorted(state.components.items())}
        for host, state in sorted(states.items())
    }
    actions, exact = planned_now(stack, states, console)
    return versions, node_drift(states, releases, actions, exact_engines=exact)


def planned_now(stack: Stack, states: Mapping[str, HostState], console: Console) -> tuple[list[Action], bool]:
    """The plan against the recorded states, with the engines' model digests from the registry
    when it answers (else engines are compared by version only, and a note says so)."""
    from podium.plan import make_plan
    from podium.stack.versions import load_versions

    digests = None
    if stack.registry and stack.models and any("registry" in s.components for s in states.values()):
        from podium.registry.sync import sync_models

        try:
            digests = sync_models(stack, push=False)
        except (PodiumError, OSError) as exc:
            console.print(f"[yellow]note:[/] engines compared by version only: {exc}", markup=True)
    exact = digests is not None or not stack.engines
    return make_plan(stack, load_versions(), dict(states), digests), exact


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
    releases: list[NodeDrift] = []
    if stack is not None:
        loaded = load_named_stack(stack)
        prometheus = prometheus or stack_prometheus_url(loaded)
        versions, releases = recorded_nodes(loaded, Console(stderr=True, highlight=False))
    if prometheus is None:
        raise InvalidInput(
            "no Prometheus address is known; give a STACK or pass --prometheus URL, "
            "e.g. --prometheus http://10.77.0.10:9090"
        )
    show_status(prometheus, versions=versions, releases=releases, as_json=as_json, window=window)


def register(app: typer.Typer) -> None:
    """Add `podium status` to the root app."""
    app.command("status")(status)
