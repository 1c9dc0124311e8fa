"""`podium:host:Component`: one component's pyinfra role on one host, as a Pulumi dynamic
resource that runs the same role `podium up` runs and diffs on version and config hash."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi.dynamic as dynamic

# Changing these means another thing entirely: remove the old one, then lay down the new.
REPLACE_ON = ("stack", "component", "host")
UPDATE_ON = ("version", "config_hash")


def run_role(props: dict[str, Any], verb: str) -> None:
    """Run `verb` of the component's role on the host and record the host's state, exactly as
    `podium up` does. Imported late: the Pulumi language host pickles the provider, and the
    host layer (pyinfra) is only needed when a resource really changes."""
    from podium.drivers.pyinfra_runner import read_states, run_component
    from podium.errors import PodiumError
    from podium.inventory import connection
    from podium.plan.state import HostState
    from podium.registry.ca import CaScope, ca_certificate
    from podium.stack.loader import load_stack

    stack = load_stack(props["stack"])
    # Roles install and sign with the stack CA; it is made (or remade) for the stack's scope.
    ca_certificate(stack.name, CaScope.of(stack))
    host, component = props["host"], props["component"]
    entry = (host, {**connection(stack, host), **_host_data(stack, component, host)})
    state = read_states([entry]).get(host) or HostState(host=host)
    if verb == "remove":
        state.components.pop(component, None)
    else:
        state.record(component, props["version"], props["config_hash"])
    result = run_component([entry], component, verb, record=lambda _name: state)
    if not result.ok:
        raise PodiumError(f"{component} on {host}: {result.failed.get(host, 'failed')}")


def _host_data(stack: Any, component: str, host: str) -> dict[str, Any]:
    """The `podium_<role>` host data the role reads: the plan's settings for this host."""
    from podium.plan.components import BY_NAME
    from podium.stack.versions import load_versions

    role = component.replace("-", "_")
    data: dict[str, Any] = {f"podium_{role}_version": load_versions().version(component, stack)}
    if host in BY_NAME[component].hosts(stack):
        data[f"podium_{role}"] = BY_NAME[component].settings(stack, host)
    return data


class RoleProvider(dynamic.ResourceProvider):
    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        run_role(props, "deploy")
        return dynamic.CreateResult(id_=f"{props['host']}/{props['component']}", outs=props)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        changed = [k for k in (*REPLACE_ON, *UPDATE_ON) if olds.get(k) != news.get(k)]
        replaces = [k for k in changed if k in REPLACE_ON]
        return dynamic.DiffResult(changes=bool(changed), replaces=replaces,
                                  delete_before_replace=True)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        run_role(news, "deploy")
        return dynamic.UpdateResult(outs=news)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        run_role(props, "remove")


class RoleRun(dynamic.Resource):
    def __init__(self, name: str, props: dict[str, Any],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(RoleProvider(), name, props, opts)


@dataclass(frozen=True)
class HostComponentArgs:
    """stack: the stack folder (the provider loads the stack from it when it runs).
    component, host: what runs where, as in `podium plan`.
    version, config_hash: the plan's; a change of either re-runs the role.

    Example: HostComponentArgs("stacks/lab", "base", "node1", "1.0.0", "3f2a...")
    """

    stack: str
    component: str
    host: str
    version: str
    config_hash: str


class HostComponent(pulumi.ComponentResource):
    def __init__(self, name: str, args: HostComponentArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("podium:host:Component", name, None, opts)
        self.role = RoleRun(
            f"{name}-role",
            {"stack": args.stack, "component": args.component, "host": args.host,
             "version": args.version, "config_hash": args.config_hash},
            pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"component": args.component, "host": args.host,
                               "version": args.version})
