"""The gateway config file: defaults, strictness, and errors that name file, field and value."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from podium.errors import InvalidInput
from podium.services.gateway.config import load_config, parse_quota
from podium.services.gateway.limits import period_window

EXAMPLE = """\
listen: {host: 127.0.0.1, port: 8080}
store: sqlite:///var/lib/podium/gateway.db
admin_token_file: admin.token
models:
  tiny:
    kind: llm
    served_name: podium-llama-tiny
    replicas: [http://10.0.0.5:8081/, http://10.0.0.6:8081]
    price: {prompt_per_1k: 0.5, completion_per_1k: 1.5}
  iris:
    kind: predictive
    replicas: [http://10.0.0.7:8082]
limits: {rpm: 600, tpm: 100000, quota: 1000000/month}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def test_example_config_loads_with_defaults_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "admin.token").write_text("pdm-admin-secret\n")
    config = load_config(write(tmp_path, EXAMPLE))
    assert config.models["tiny"].replicas == ["http://10.0.0.5:8081", "http://10.0.0.6:8081"]
    assert config.models["tiny"].probe_path() == "/health"
    assert config.models["iris"].probe_path() == "/v2/health/ready"
    assert config.admin_token_file == tmp_path / "admin.token"
    assert config.admin_token_hash() == hashlib.sha256(b"pdm-admin-secret").hexdigest()
    assert config.health.eject_after == 3 and config.key_cache_s == 1.0


@pytest.mark.parametrize("text, fragment", [
    (EXAMPLE + "colour: blue\n", "'colour'"),
    (EXAMPLE.replace("kind: llm", "kind: chatbot"), "models.tiny.kind"),
    (EXAMPLE.replace("http://10.0.0.7:8082", "10.0.0.7:8082"), "models.iris.replicas"),
    (EXAMPLE.replace("1000000/month", "lots"), "limits.quota"),
    (EXAMPLE.replace("sqlite:///var", "mysql://var"), "store"),
    ("- just\n- a list\n", "must be a mapping"),
    ("models: [unclosed\n", "not valid YAML"),
    (EXAMPLE + "metrics_listen: {host: 127.0.0.1, port: 8080}\n", "metrics_listen"),
    (EXAMPLE + "connections: {max_header_bytes: 10}\n", "connections.max_header_bytes"),
    (EXAMPLE + "connections: {write_timeout_s: 0}\n", "connections.write_timeout_s"),
    (EXAMPLE + "grpc_listen: {host: 127.0.0.1, port: 8081}\n", "grpc_listen.port 8081"),
    (EXAMPLE.replace("[http://10.0.0.7:8082]",
                     "[http://10.0.0.7:8082]\n    grpc_replicas: [10.0.0.7:8083, 10.0.0.8:8083]"),
     "field 'models.iris': Value error, grpc_replicas names 2 endpoints for 1 replicas"),
    (EXAMPLE.replace("[http://10.0.0.7:8082]", "[http://10.0.0.7:8082]\n    grpc_replicas: [http://10.0.0.7:8083]"),
     "grpc replica 'http://10.0.0.7:8083' must be HOST:PORT"),
    (EXAMPLE.replace("    price:", "    grpc_replicas: [10.0.0.5:8082, 10.0.0.6:8082]\n    price:"),
     "grpc_replicas is for predictive models"),
])
def test_errors_name_the_file_the_field_and_the_value(tmp_path: Path, text: str,
                                                      fragment: str) -> None:
    with pytest.raises(InvalidInput) as error:
        load_config(write(tmp_path, text))
    assert fragment in str(error.value) and "gateway.yaml" in str(error.value)


def test_a_predictive_model_names_each_replicas_grpc_endpoint(tmp_path: Path) -> None:
    text = EXAMPLE.replace("    replicas: [http://10.0.0.7:8082]",
                           "    replicas: [http://10.0.0.7:8082, http://10.0.0.8:8082/]\n"
                           "    grpc_replicas: [10.0.0.7:8083, 10.0.0.8:8083]")
    iris = load_config(write(tmp_path, text)).models["iris"]
    assert iris.grpc_target("http://10.0.0.8:8082") == "10.0.0.8:8083"
    assert iris.grpc_target("http://10.0.0.7:8082") == "10.0.0.7:8083"
    assert load_config(write(tmp_path, EXAMPLE)).models["iris"].grpc_target("http://10.0.0.7:8082") is None


def test_quota_format_and_its_windows() -> None:
    assert parse_quota("5000/month") == (5000, "month")
    assert parse_quota(" 7 / day ") == (7, "day")
    with pytest.raises(InvalidInput, match="N/day or N/month"):
        parse_quota("5000/week")
    # 2024-02-29 12:00 UTC: a leap day, inside February.
    noon = 1709208000.0
    assert period_window(noon, "day") == (1709164800, 1709251200)
    assert period_window(noon, "month") == (1706745600, 1709251200)
