"""Which changes roll host by host, and which replicas a host's change drains."""

from __future__ import annotations

import yaml

from podium.plan.actions import Action, ActionKind
from podium.render import REPO
from podium.rolling import HostReplica, _stopped, host_replicas, rolls
from podium.services.gateway.config import GatewayConfig
from podium.stack import load_stack


def action(component: str, host: str, kind: ActionKind) -> Action:
    return Action(host, component, kind, None, "1", "hash", {})


def test_engines_and_gateways_roll_when_a_host_already_serving_changes() -> None:
    for component in ("engine-llamacpp", "engine-predictive", "gateway"):
        todo = [action(component, "node1", "keep"), action(component, "node2", "reconfigure")]
        assert rolls(component, todo, dry_run=False)
        assert not rolls(component, todo, dry_run=True), "a dry run changes nothing to roll"
    # New hosts serve nothing yet and kept ones change nothing: all at once, as before.
    assert not rolls("engine-llamacpp", [action("engine-llamacpp", "node1", "install"),
                                         action("engine-llamacpp", "node2", "keep")], dry_run=False)
    assert not rolls("base", [action("base", "node1", "upgrade")], dry_run=False)


def test_a_host_with_several_replicas_drains_all_of_its_kind() -> None:
    stack = load_stack(REPO / "tests" / "stacks" / "labeng")
    assert host_replicas(stack, "engine-llamacpp", "node1") == [
        HostReplica("tiny-llama-cpp/0", "http://10.77.12.11:8080"),
        HostReplica("tiny-llama-cpp/1", "http://10.77.12.11:8081"),
        HostReplica("tiny-llama-b/0", "http://10.77.12.11:8085"),
    ]
    assert host_replicas(stack, "engine-predictive", "node2") == [
        HostReplica("iris-predictive/0", "http://10.77.12.12:8090")]
    assert host_replicas(stack, "engine-llamacpp", "node2") == []


def test_the_control_listener_is_opened_to_the_admin_sources_only_and_bounds_the_stop() -> None:
    from podium.files import files_for
    from podium.plan.components import BY_NAME

    stack = load_stack(REPO / "tests" / "stacks" / "labroll")
    assert stack.gateway is not None
    settings = BY_NAME["base"].settings(stack, "ctrl")
    by_port = {o["port"]: o for o in settings["openings"]}
    assert by_port[8445]["sources"] == ["10.77.13.1"], by_port[8445]
    assert by_port[8443]["sources"] == [], "the API is for every client"
    rendered = files_for("gateway", "ctrl", BY_NAME["gateway"].settings(stack, "ctrl"))
    config = GatewayConfig.model_validate(yaml.safe_load(rendered["gateway.yaml"]))
    assert config.admin_listen is not None and config.admin_listen.port == 8445
    assert config.shutdown_grace_s == stack.gateway.drain_timeout_s == 30
    # systemd waits past the gateway's own bound before it kills it.
    assert "TimeoutStopSec=45\n" in rendered["podium-gateway.service"]


def test_systemd_holds_the_gateways_api_port_it_is_configured_to_listen_on() -> None:
    from podium.files import files_for
    from podium.plan.components import BY_NAME

    stack = load_stack(REPO / "tests" / "stacks" / "labroll")
    rendered = files_for("gateway", "ctrl", BY_NAME["gateway"].settings(stack, "ctrl"))
    config = GatewayConfig.model_validate(yaml.safe_load(rendered["gateway.yaml"]))
    socket_unit = rendered["podium-gateway.socket"]
    # The gateway refuses a passed socket bound elsewhere than its listen address.
    assert f"ListenStream={config.listen.host}:{config.listen.port}\n" in socket_unit, socket_unit
    assert "Service=podium-gateway.service\n" in socket_unit
    # A restart of the gateway alone leaves the socket, and its queue of waiting clients, held.
    assert "Requires=podium-gateway.socket\n" in rendered["podium-gateway.service"]


def test_a_stopped_roll_names_the_replica_its_address_and_the_rollback() -> None:
    stack = load_stack(REPO / "tests" / "stacks" / "labroll")
    reps = host_replicas(stack, "engine-llamacpp", "node1")
    message = _stopped(stack, "engine-llamacpp", "tiny-llama-cpp/0 on node1", reps,
                       "llama-server: error: invalid argument: --no-such-flag.")
    assert message.startswith("engine-llamacpp: tiny-llama-cpp/0 on node1 (http://10.77.13.11:8080,"
                              " left drained) did not pass readiness: llama-server: error: invalid"
                              " argument: --no-such-flag. The rolling change stopped there;"), message
    assert "`podium rollback labroll`" in message
