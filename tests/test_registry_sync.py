"""sync_models and the registry's front door, against a real docker-registry behind a real nginx
on 127.0.0.1, both configured from the registry role's own templates, TLS from the stack CA."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml
from roles.registry import accounts

from podium.errors import InvalidInput, PodiumError
from podium.files import files_for
from podium.plan.components import BY_NAME
from podium.registry import ModelRef
from podium.registry.access import (
    pull_credential,
    push_credential,
    registry_ca,
    stack_registry,
)
from podium.registry.ca import CaScope, ca_certificate, server_certificate
from podium.registry.sync import sync_models, tiny_cache
from podium.stack import load_stack
from podium.stack.model import Stack

STACK = "synctest"
REGISTRY_BIN = "/usr/bin/docker-registry"
NGINX_BIN = "/usr/sbin/nginx"

NGINX_MAIN = """\
daemon off;
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/site.conf;
}}
"""


@dataclass(frozen=True)
class Front:
    """docker-registry on a unix socket and nginx in front of it on 127.0.0.1:port."""

    port: int
    folder: Path

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, ca: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            break
        try:
            if requests.get(url, verify=str(ca), timeout=1).status_code == 401:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"registry front did not start; see {url} logs")


def _write_stack(folder: Path, port: int, models: list[dict], engines: list[dict]) -> Stack:
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "name": STACK,
        "nodes": [{"name": "reg", "address": "127.0.0.1"}],
        "network": {"admin_sources": ["127.0.0.1"]},
        "registry": {"node": "reg", "port": port, "tls": True},
        "models": models,
        "engines": engines,
    }
    (folder / "stack.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    return load_stack(str(folder))


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    for tool in (REGISTRY_BIN, NGINX_BIN):
        if not Path(tool).exists():
            pytest.skip(f"{tool} is not installed (apt-get install docker-registry nginx)")
    if os.geteuid() != 0:
        pytest.skip("needs root: nginx's test instance runs its workers as root to reach the socket")
    tmp = tmp_path_factory.mktemp("front")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PODIUM_STATE_DIR", str(tmp / "state"))
        port, debug = _free_port(), _free_port()
        stack = _write_stack(tmp / "stack", port, [], [])
        settings = BY_NAME["registry"].settings(stack, "reg")
        settings = {**settings, "path": str(tmp / "data"), "debug_port": debug}
        rendered = files_for("registry", "reg", settings)
        sock = str(tmp / "registry.sock")
        etc = tmp / "etc"
        etc.mkdir()
        config = rendered["config.yml"].replace("/run/docker-registry/registry.sock", sock)
        config = config.replace(f"0.0.0.0:{debug}", f"127.0.0.1:{debug}")
        (tmp / "config.yml").write_text(config)
        site = rendered["podium-registry.conf"].replace("/run/docker-registry/registry.sock", sock)
        site = site.replace("/etc/podium/registry", str(etc))
        site = site.replace(f"listen {port} ssl", f"listen 127.0.0.1:{port} ssl")
        (tmp / "site.conf").write_text(site)
        (tmp / "nginx.conf").write_text(NGINX_MAIN.format(tmp=tmp))
        ca_certificate(STACK, CaScope(("reg",), ("127.0.0.1/32",)), replace=True)
        cert, key = server_certificate(STACK, "registry", ["127.0.0.1"], ["reg"])
        shutil.copy(cert, etc / "tls.crt")
        shutil.copy(key, etc / "tls.key")
        push, pull = push_credential(STACK), pull_credential(STACK)
        (etc / "htpasswd-pull").write_text(accounts.htpasswd([pull, push]))
        (etc / "htpasswd-push").write_text(accounts.htpasswd([push]))
        log = (tmp / "services.log").open("ab")
        procs = [
            subprocess.Popen([REGISTRY_BIN, "serve", str(tmp / "config.yml")], stdout=log, stderr=log),
            subprocess.Popen(
                [NGINX_BIN, "-c", str(tmp / "nginx.conf"), "-p", str(tmp)], stdout=log, stderr=log
            ),
        ]
        try:
            _wait(f"https://127.0.0.1:{port}/v2/", registry_ca(STACK), procs)
            yield Front(port, tmp)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            log.close()


@pytest.fixture
def env(front: Front, monkeypatch: pytest.MonkeyPatch) -> Front:
    monkeypatch.setenv("PODIUM_STATE_DIR", str(front.folder / "state"))
    return front


def _stack(front: Front, name: str, models: list[dict], engines: list[dict]) -> Stack:
    return _write_stack(front.folder / f"stack-{name}", front.port, models, engines)


def _engine(name: str, model: str, port: int = 8080, kind: str = "llamacpp") -> dict:
    return {"name": name, "kind": kind, "model": model, "nodes": ["reg"], "port": port}


def _tags(stack: Stack, name: str) -> dict[str, str]:
    reg = stack_registry(stack, pull_credential(stack.name))
    return {t.tag: t.digest for t in reg.tags(name)}


def test_front_refuses_anonymous_and_pull_account_pushes_and_takes_the_push_account(
    env: Front,
) -> None:
    ca = str(registry_ca(STACK))
    upload = f"{env.base}/v2/probe/blobs/uploads/"
    pull, push = pull_credential(STACK), push_credential(STACK)
    assert requests.post(upload, verify=ca, timeout=10).status_code == 401
    refused = requests.post(upload, auth=(pull.user, pull.password), verify=ca, timeout=10)
    assert refused.status_code == 401, "the pull account may not start a push"
    assert requests.get(f"{env.base}/v2/", auth=(pull.user, pull.password), verify=ca).ok
    started = requests.post(upload, auth=(push.user, push.password), verify=ca, timeout=10)
    assert started.status_code == 202, started.text
    wrong = requests.post(upload, auth=(push.user, "not-it"), verify=ca, timeout=10)
    assert wrong.status_code == 401


def test_sync_pushes_missing_versions_sets_aliases_and_maps_every_engine(env: Front) -> None:
    models = [{"name": "alpha", "version": "1", "format": "gguf", "source": "tiny:gguf",
               "aliases": ["stable"]}]
    engines = [_engine("by-alias", "alpha:stable"), _engine("by-version", "alpha:1", 8081)]
    stack = _stack(env, "alpha", models, engines)
    digests = sync_models(stack, push=True)
    assert set(digests) == {"alpha:stable", "alpha:1"}
    digest = digests["alpha:1"]
    assert digests["alpha:stable"] == digest
    assert _tags(stack, "alpha") == {"1": digest, "stable": digest}
    assert sync_models(stack, push=False) == digests


def test_a_rerun_pushes_nothing_and_a_regenerated_tiny_model_keeps_its_digest(env: Front) -> None:
    models = [{"name": "beta", "version": "1", "format": "gguf", "source": "tiny:gguf"}]
    stack = _stack(env, "beta", models, [_engine("beta", "beta:1")])
    first = sync_models(stack, push=True)
    shutil.rmtree(tiny_cache(STACK) / "beta-1")
    # With the cached file gone the registry still has the version: nothing is generated.
    assert sync_models(stack, push=True) == first
    assert not (tiny_cache(STACK) / "beta-1").exists()
    # A second version from a fresh generation has the same files, so the same layers.
    stack2 = _stack(env, "beta2", [{**models[0], "version": "2"}], [_engine("beta", "beta:2")])
    second = sync_models(stack2, push=True)
    reg = stack_registry(stack, pull_credential(STACK))
    layers = [reg.manifest(ModelRef("beta", tag=v)).data["layers"] for v in ("1", "2")]
    assert layers[0] == layers[1]
    assert second["beta:2"] != first["beta:1"]  # the config names the version


def test_without_push_nothing_is_pushed_and_missing_versions_are_left_out(env: Front) -> None:
    models = [{"name": "gamma", "version": "1", "format": "gguf", "source": "tiny:gguf"}]
    stack = _stack(env, "gamma", models, [_engine("gamma", "gamma:1")])
    assert sync_models(stack, push=False) == {}
    assert _tags(stack, "gamma") == {}


def test_an_alias_moved_by_hand_is_moved_back_to_the_stacks_version(env: Front) -> None:
    models = [
        {"name": "delta", "version": "1", "format": "gguf", "source": "tiny:gguf", "aliases": ["stable"]},
    ]
    stack = _stack(env, "delta", models, [_engine("delta", "delta:stable")])
    pinned = sync_models(stack, push=True)["delta:stable"]
    reg = stack_registry(stack, push_credential(STACK))
    other = reg.push(Path(__file__), "delta", "scratch", fmt="gguf")
    reg.tag(ModelRef("delta", tag="scratch"), "stable")
    assert _tags(stack, "delta")["stable"] == other
    assert sync_models(stack, push=True)["delta:stable"] == pinned
    assert _tags(stack, "delta")["stable"] == pinned


def test_a_relative_source_is_read_from_the_stack_folder(env: Front) -> None:
    folder = env.folder / "stack-epsilon"
    folder.mkdir()
    (folder / "weights").mkdir()
    (folder / "weights" / "m.gguf").write_bytes(b"GGUF" + bytes(64))
    models = [{"name": "epsilon", "version": "1", "format": "gguf", "source": "weights/m.gguf"}]
    stack = _stack(env, "epsilon", models, [_engine("epsilon", "epsilon:1")])
    digest = sync_models(stack, push=True)["epsilon:1"]
    info = stack_registry(stack, pull_credential(STACK)).show(ModelRef("epsilon", digest=digest))
    assert [f["path"] for f in info.files] == ["m.gguf"]
    missing = [{**models[0], "name": "zeta", "source": "weights/none.gguf"}]
    stack = _stack(env, "zeta", missing, [_engine("zeta", "zeta:1")])
    with pytest.raises(InvalidInput, match=r"models\[0\]\.source 'weights/none.gguf'"):
        sync_models(stack, push=True)


def test_a_tiny_embedding_model_is_pushed_as_one_gguf_file(env: Front) -> None:
    models = [{"name": "theta", "version": "1", "format": "gguf",
               "source": "tiny:gguf-embedding"}]
    stack = _stack(env, "theta", models, [_engine("theta", "theta:1")])
    digest = sync_models(stack, push=True)["theta:1"]
    info = stack_registry(stack, pull_credential(STACK)).show(ModelRef("theta", digest=digest))
    assert [f["path"] for f in info.files] == ["theta.gguf"]


def test_a_pushed_skops_model_carries_its_inputs_and_outputs_in_its_config(env: Front
                                                                          ) -> None:
    models = [{"name": "lambda", "version": "1", "format": "skops", "source": "tiny:sklearn"}]
    stack = _stack(env, "lambda", models, [_engine("lambda", "lambda:1", kind="predictive")])
    digest = sync_models(stack, push=True)["lambda:1"]
    info = stack_registry(stack, pull_credential(STACK)).show(ModelRef("lambda", digest=digest))
    assert info.signature is not None
    assert info.signature["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    assert [o["name"] for o in info.signature["outputs"]] == ["predict", "predict_proba"]


def test_skops_types_beyond_the_safe_list_need_the_stacks_trust(env: Front) -> None:
    sio = pytest.importorskip("skops.io")
    import operator

    from sklearn.preprocessing import FunctionTransformer

    folder = env.folder / "stack-iota"
    (folder / "model").mkdir(parents=True)
    # operator.neg is not on skops' safe list: loading it must be allowed by the stack.
    sio.dump(FunctionTransformer(func=operator.neg), folder / "model" / "neg.skops")
    base = {"name": "iota", "version": "1", "format": "skops", "source": "model"}
    stack = _stack(env, "iota", [base], [_engine("iota", "iota:1", kind="predictive")])
    with pytest.raises(InvalidInput, match="_operator.neg"):
        sync_models(stack, push=True)
    trusted = {**base, "trusted_types": ["_operator.neg"]}
    stack = _stack(env, "iota", [trusted], [_engine("iota", "iota:1", kind="predictive")])
    digest = sync_models(stack, push=True)["iota:1"]
    info = stack_registry(stack, pull_credential(STACK)).show(ModelRef("iota", digest=digest))
    assert info.trust["skops_types"] == ["_operator.neg"]


def test_tiny_sklearn_pushes_the_model_with_its_sidecar(env: Front) -> None:
    pytest.importorskip("skops")
    base = {"name": "iris", "version": "1", "format": "skops", "source": "tiny:sklearn"}
    stack = _stack(env, "iris", [base], [_engine("iris", "iris:1", kind="predictive")])
    digest = sync_models(stack, push=True)["iris:1"]
    info = stack_registry(stack, pull_credential(STACK)).show(ModelRef("iris", digest=digest))
    assert sorted(f["path"] for f in info.files) == ["iris.json", "iris.skops"]


def test_a_registry_certificate_from_another_ca_is_refused(
    env: Front, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    models = [{"name": "eta", "version": "1", "format": "gguf", "source": "tiny:gguf"}]
    stack = _stack(env, "eta", models, [_engine("eta", "eta:1")])
    # Another control machine's state: another CA (and accounts) for a stack of the same name.
    monkeypatch.setenv("PODIUM_STATE_DIR", str(tmp_path))
    ca_certificate(STACK, CaScope(("reg",), ("127.0.0.1/32",)), replace=True)
    with pytest.raises(PodiumError, match="TLS check of the registry"):
        sync_models(stack, push=False)
