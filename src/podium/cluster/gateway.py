"""The gateway on the cluster: one node-pinned Deployment per gateway node, its config, TLS and
store, from the same settings the gateway role gets on a host."""

from __future__ import annotations

from typing import Any

import yaml

from podium.cluster.inputs import GATEWAY_STORE, GATEWAY_TLS, ClusterInputs, secret
from podium.cluster.meta import Manifest, content_hash, metadata, podium_image
from podium.cluster.shapes import config_map, deployment, http_probe, service
from podium.plan.components import BY_NAME
from podium.stack.model import Stack
from podium.stack.ports import POSTGRESQL_PORT
from podium.stack.versions import VersionTable

CONFIG_DIR = "/etc/podium/gateway"
TLS_DIR = "/etc/podium/gateway/tls"
DATA_DIR = "/var/lib/podium-gateway"
DATA_CLAIM = "gateway-data"


def gateway_config(stack: Stack, inputs: ClusterInputs) -> dict[str, Any]:
    """gateway.yaml in the gateway's own schema (GatewayConfig), built from the role settings."""
    gw = stack.gateway
    assert gw is not None
    settings = BY_NAME["gateway"].settings(stack, gw.nodes[0])
    models: dict[str, Any] = {}
    for name, entry in settings["models"].items():
        model: dict[str, Any] = {"kind": entry["kind"], "replicas": entry["replicas"],
                                 "default_max_tokens": entry["default_max_tokens"]}
        price = settings["prices"].get(name)
        if price:
            model["price"] = {"prompt_per_1k": price["prompt"],
                              "completion_per_1k": price["completion"]}
        models[name] = model
    config: dict[str, Any] = {
        "listen": {"host": "0.0.0.0", "port": gw.port},
        "metrics_listen": {"host": "0.0.0.0", "port": gw.scrape_port},
        # The Open Inference Protocol's gRPC service, with the API's TLS; it reaches engines
        # over REST (the replicas are Services, with no gRPC endpoint named).
        "grpc_listen": {"host": "0.0.0.0", "port": gw.grpc_listen_port},
        "connections": {"max_connections": gw.max_connections,
                        "write_timeout_s": gw.write_timeout_s},
        "models": models,
    }
    if gw.workers > 1:
        config["workers"] = gw.workers
    if gw.tls:
        config["tls"] = {"cert": f"{TLS_DIR}/tls.crt", "key": f"{TLS_DIR}/tls.key"}
    if gw.store == "postgresql":
        assert gw.store_node is not None
        address = stack.node(gw.store_node).address
        # The password comes from PGPASSWORD (a Secret), never from this ConfigMap.
        config["store"] = f"postgresql+psycopg://podium@{address}:{POSTGRESQL_PORT}/podium"
    else:
        config["store"] = f"sqlite:///{DATA_DIR}/gateway.db"
    # Usage records the store could not take are spooled here, on the gateway's own volume.
    config["state_dir"] = DATA_DIR
    if inputs.gateway_admin_token_sha256:
        config["admin_token_sha256"] = inputs.gateway_admin_token_sha256
    return config


def gateway_objects(stack: Stack, versions: VersionTable, inputs: ClusterInputs) -> list[Manifest]:
    gw = stack.gateway
    assert gw is not None
    text = yaml.safe_dump(gateway_config(stack, inputs), sort_keys=True)
    out: list[Manifest] = [config_map(stack, "gateway", "gateway", "gateway-config",
                                      {"gateway.yaml": text})]
    volumes: list[dict[str, Any]] = [{"name": "config", "configMap": {"name": "gateway-config"}}]
    mounts: list[dict[str, Any]] = [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}]
    env: list[dict[str, Any]] = [{"name": "DO_NOT_TRACK", "value": "1"}]
    if gw.tls:
        if inputs.gateway_tls_cert and inputs.gateway_tls_key:
            out.append(secret(stack, "gateway", "gateway", GATEWAY_TLS,
                              {"tls.crt": inputs.gateway_tls_cert,
                               "tls.key": inputs.gateway_tls_key}, kind="kubernetes.io/tls"))
        volumes.append({"name": "tls", "secret": {"secretName": GATEWAY_TLS,
                                                  "defaultMode": 0o400}})
        # The key's own folder: a ConfigMap volume mounted at CONFIG_DIR cannot hold it.
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
    if gw.store == "postgresql":
        if inputs.gateway_store_password:
            out.append(secret(stack, "gateway", "gateway", GATEWAY_STORE,
                              {"password": inputs.gateway_store_password}))
        env.append({"name": "PGPASSWORD", "valueFrom": {
            "secretKeyRef": {"name": GATEWAY_STORE, "key": "password"}}})
        # The usage spool outlives a killed container (the pod keeps its emptyDir).
        volumes.append({"name": "data", "emptyDir": {}})
        mounts.append({"name": "data", "mountPath": DATA_DIR})
    else:
        # The stack rules allow sqlite with one gateway node only, so one claim serves it.
        out.append({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": metadata(stack, "gateway", "gateway", DATA_CLAIM),
            "spec": {"accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": "1Gi"}}},
        })
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": DATA_CLAIM}})
        mounts.append({"name": "data", "mountPath": DATA_DIR})
    scheme = "HTTPS" if gw.tls else "HTTP"
    ready = http_probe("/v2/health/ready", "https" if gw.tls else "http", period=5, failures=3)
    live = http_probe("/v2/health/live", "https" if gw.tls else "http", period=10, failures=6)
    for probe in (ready, live):
        probe["httpGet"]["scheme"] = scheme
        probe["httpGet"]["port"] = "gateway"
    for node in gw.nodes:
        container = {
            "name": "gateway",
            "image": podium_image(stack, versions),
            "command": ["podium", "gateway", "serve", "--config", f"{CONFIG_DIR}/gateway.yaml"],
            "env": env,
            # Prometheus scrapes the node's address, as for a gateway on a host; the node's
            # firewall opens the metrics port to the monitoring node only.
            "ports": [{"name": "gateway", "containerPort": gw.port, "hostPort": gw.port,
                       "protocol": "TCP"},
                      {"name": "metrics", "containerPort": gw.scrape_port,
                       "hostPort": gw.scrape_port, "protocol": "TCP"},
                      # On the node's address like the API port; its firewall opens it to
                      # every client.
                      {"name": "grpc", "containerPort": gw.grpc_listen_port,
                       "hostPort": gw.grpc_listen_port, "protocol": "TCP"}],
            "resources": {"requests": {"cpu": "250m", "memory": "256Mi"},
                          "limits": {"memory": "1Gi"}},
            "volumeMounts": mounts,
            "readinessProbe": ready,
            "livenessProbe": live,
            "securityContext": {"allowPrivilegeEscalation": False},
        }
        out.append(deployment(
            stack, "gateway", "gateway", f"gateway-{node}", node=node, containers=[container],
            volumes=volumes, config_hash=content_hash(text, gw.tls),
            extra_labels={"podium.io/node": node},
            annotations={"prometheus.io/scrape": "true",
                         "prometheus.io/port": str(gw.scrape_port)},
        ))
    out.append(service(stack, "gateway", "gateway", "gateway",
                       [("gateway", gw.port), ("grpc", gw.grpc_listen_port)]))
    return out
