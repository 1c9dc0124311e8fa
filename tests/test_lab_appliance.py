"""The whole lab appliance (the content of stacks/lab) end to end on real machines: `podium lab
up` provisions every component and verifies it, then the official `openai` client gets answers
through the gateway over TLS, a predictive model answers Open Inference Protocol v2, every
request is metered, the trainer's venv comes from the bundle's locked wheelhouse, Prometheus has
the gateway's TTFT histogram, a stopped engine replica fires
its alert, the operator console answers the lab host (its pages' weight and first render measured
in Chromium) and refuses a node, a second `podium up` changes nothing, and `lab down` leaves
nothing behind.

It runs a copy of stacks/lab under a name and subnet of its own, so a lab the user is running
from stacks/lab (its machines, keys and usage) is never touched. Like stacks/lab, the copy comes
up offline from its own bundle (built from ~/.cache/podium's caches), and a capture proves that
nothing from its nodes leaves the lab subnet."""

import json
import os
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai
import pytest
from roles.checks import VENV_MARK

from podium.bundle.wheels import locks_mark
from podium.finetune.job import TRAINER_HOME
from podium.finetune.toolchain import TRAINER, trainer_requirements
from podium.gateway_access import ADMIN_TOKEN
from podium.lab.up import LAB_STATE
from podium.monitoring.query import PrometheusClient
from podium.registry.sync import tiny_cache
from podium.render import REPO
from podium.secrets import StackSecrets
from tests.fixtures_console import SCREENSHOTS, browser, check_figures, every_page, log_in
from tests.fixtures_lab import UniqueStack, podium, remove_stack_state, require_lab_host, unique_stack

__all__ = ["browser"]  # a fixture, imported so pytest finds it
pytestmark = pytest.mark.lab
PINS = dict(r.split("==", 1) for r in trainer_requirements())


def line(output: str, prefix: str) -> str:
    found = [x.removeprefix(prefix).strip() for x in output.splitlines() if x.startswith(prefix)]
    assert found, f"no line starting {prefix!r} in:\n{output}"
    return found[-1]


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> UniqueStack:
    require_lab_host()
    copy = unique_stack(REPO / "stacks" / "lab", tmp_path_factory.mktemp("appliance"))
    # node2 labelled for training as well: the trainer's venv (torch and all) comes from the
    # bundle like everything else, under the same capture.
    text = (copy.folder / "stack.yaml").read_text()
    worker = f"address: {copy.prefix}12\n    labels: {{role: worker}}"
    assert worker in text, text
    (copy.folder / "stack.yaml").write_text(
        text.replace(worker, f'address: {copy.prefix}12\n    labels: {{role: worker, trainer: "true"}}'))
    return copy


class OutboundCapture:
    """tcpdump on every interface of this host (the lab bridge and the nodes' veths among them)
    for IPv4 packets from the lab's nodes to any address outside the lab subnet, and, to show the
    capture sees the nodes at all, their time queries to the lab host's chronyd."""

    def __init__(self, appliance: UniqueStack, folder: Path) -> None:
        self.subnet, gateway = f"{appliance.prefix}0/24", f"{appliance.prefix}1"
        self.pcap = folder / "outbound.pcap"
        self.filter = (f"ip and src net {self.subnet} and not src host {gateway} and "
                       f"(not dst net {self.subnet} or (dst host {gateway} and udp dst port 123))")
        self.proc = subprocess.Popen(
            ["tcpdump", "-i", "any", "-n", "-U", "-w", str(self.pcap), self.filter],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while not self.pcap.exists() and self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert self.proc.poll() is None and self.pcap.exists(), "tcpdump did not start"

    def stop(self) -> tuple[list[str], int]:
        """Stop the capture: the packets that left the lab subnet, one line each, and how many
        time queries from the nodes it saw."""
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

        def read(match: str) -> list[str]:
            done = subprocess.run(["tcpdump", "-r", str(self.pcap), "-n", match], capture_output=True, text=True)
            return done.stdout.splitlines()

        return read(f"not dst net {self.subnet}"), len(read("udp dst port 123"))


@pytest.fixture(scope="module")
def lab(appliance: UniqueStack, tmp_path_factory: pytest.TempPathFactory):
    stack = str(appliance.folder)
    capture = OutboundCapture(appliance, tmp_path_factory.mktemp("capture"))
    try:
        started = time.monotonic()
        result = podium("lab", "up", stack)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
        print(f"lab up from the bundle: {time.monotonic() - started:.0f} s; " +
              " ".join(x for x in result.stderr.splitlines() if x.startswith(("bundle ", "lab image "))))
        yield {
            "capture": capture,
            "url": line(result.stdout, "gateway: "),
            "key": line(result.stdout, "key: "),
            "ca": line(result.stdout, "ca: "),
            "output": result.stdout,
            "stack": stack,
            "name": appliance.name,
            "prefix": appliance.prefix,
            "prometheus": f"http://{appliance.address('10.77.0.10')}:9090",
        }
    finally:
        capture.stop()
        down = podium("lab", "down", stack)
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        bridge = subprocess.run(["ip", "link", "show", f"pdm-{appliance.name}"], capture_output=True)
        if down.returncode == 0:
            remove_stack_state(appliance.name)
        assert down.returncode == 0, down.stderr
        assert f"pdm-{appliance.name}-" not in netns
        assert bridge.returncode != 0


@pytest.fixture(scope="module")
def client(lab):
    return openai_client(lab, lab["key"])


def openai_client(lab, key: str) -> openai.OpenAI:
    """The official client, unmodified, trusting the stack's CA."""
    import httpx

    trust = ssl.create_default_context(cafile=lab["ca"])
    return openai.OpenAI(base_url=lab["url"], api_key=key, http_client=httpx.Client(verify=trust))


def test_nothing_leaves_the_lab_subnet_during_up_verify_and_100_requests(lab, client):
    """The lab comes up from its bundle offline: `podium lab up` (which runs `podium up` and
    `podium verify`) and 100 gateway requests send no packet from a node outside the lab subnet,
    the host holds no NAT for it, and every node's apt reads only the mirror."""
    for i in range(100):
        reply = client.completions.create(model="tiny-llama", prompt=f"offline {i}", max_tokens=1)
        assert reply.choices[0].text is not None
    caught, time_queries = lab["capture"].stop()
    assert time_queries > 0, "the capture saw no packet from the nodes at all"
    assert caught == [], f"{len(caught)} packets left the lab subnet, first: {caught[:5]}"

    subnet = lab["prefix"] + "0/24"
    ruleset = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=True).stdout
    nat = [x.strip() for x in ruleset.splitlines()
           if lab["prefix"] in x and any(w in x for w in ("masquerade", "snat", "dnat"))]
    assert nat == [], f"the host NATs the lab subnet {subnet}: {nat}"
    lab_table = subprocess.run(["nft", "list", "table", "ip", f"podium_{lab['name']}"], capture_output=True,
                               text=True, check=True).stdout
    assert "type nat" not in lab_table and f'iifname "pdm-{lab["name"]}" drop' in lab_table, lab_table
    legacy = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
    assert lab["prefix"] not in legacy, f"iptables NATs the lab subnet: {legacy}"

    assert not (LAB_STATE / lab["name"] / "apt-proxy").exists(), "an offline lab started the package proxy"

    mirror = f"https://{lab['prefix']}10:8440"
    for node in ("ctrl", "node1", "node2"):
        listed = podium("lab", "ssh", node, "--stack", lab["stack"], "--",
                        "grep -rhE '^(deb|URIs)' /etc/apt/sources.list /etc/apt/sources.list.d; "
                        "apt-get indextargets --format '$(SITE)' | sort -u")
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.split("\n")
        assert lines[0] == f"deb [signed-by=/etc/apt/keyrings/podium-bundle.asc] {mirror}/apt bookworm main", listed
        sites = [x for x in lines[1:] if x]
        assert sites and all(x.startswith(f"{mirror}/apt") for x in sites), f"{node} reads apt from {sites}"


def test_the_trainer_is_installed_from_the_bundles_locked_wheelhouse(lab):
    """node2's trainer venv holds exactly what the bundle's trainer lock names (the venv's mark
    is the lock's sha256) and imports the pinned torch and peft."""
    bundle = Path(lab["stack"]) / "bundle"
    mark = locks_mark(bundle, [TRAINER]).strip()
    shown = podium("lab", "ssh", "node2", "--stack", lab["stack"], "--",
                   f"cat {TRAINER_HOME}/venv/{VENV_MARK}; {TRAINER_HOME}/venv/bin/python -c "
                   "'import importlib.metadata as m; print(*(m.version(d) for d in (\"torch\", \"peft\")))'")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [mark, f"{PINS['torch']} {PINS['peft']}"], shown.stdout


def test_lab_up_prints_a_curl_line_that_works(lab):
    curl = line(lab["output"], "try: ")
    result = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["choices"][0]["message"]["content"]


def test_lab_up_prints_the_console_the_lab_host_opens(lab):
    """The `console:` line is the URL the lab host (the lab's admin source) opens: it answers
    the login page over the stack's TLS."""
    url = line(lab["output"], "console: ")
    assert url == lab["url"].removesuffix("/v1") + "/console/", lab["output"]
    trust = ssl.create_default_context(cafile=lab["ca"])
    with urllib.request.urlopen(url, context=trust, timeout=30) as answer:
        page = answer.read().decode()
        assert answer.url == url + "login", answer.url  # no session yet: sent to log in
    assert 'name="token"' in page and "Podium console" in page, page[:500]


def test_verify_proves_the_console_refuses_a_node_and_answers_the_lab_host(lab):
    """podium verify asks the console from ctrl itself (no admin source: refused) and from the
    lab host (the admin source: the login page); both checks ran and passed, none skipped. It
    proves the trainer on node2 too."""
    result = podium("verify", lab["stack"], "--json")
    outcomes = {(o["component"], o["host"]): o for o in json.loads(result.stdout)}
    gateway = outcomes[("gateway", "ctrl")]
    assert gateway["passed"], gateway["failures"]
    assert {"test_100_the_console_refuses_a_node_that_is_no_admin_source",
            "test_110_the_console_shows_its_login_page_to_an_admin_source"} <= set(gateway["checks"]), gateway
    trainer = outcomes[("trainer", "node2")]
    assert trainer["passed"] and len(trainer["checks"]) == 2, trainer
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_console_pages_in_a_browser_on_the_lab_host(lab, browser):
    """The console in Debian's headless Chromium on the lab host, against the lab's gateway:
    log in with the stack's admin token, then every page's screenshot (lab-NAME.png) and its
    weight and time to first render, kept in build/screenshots/lab-figures.json."""
    base = line(lab["output"], "console: ")
    log_in(browser, base, StackSecrets(lab["name"]).token(ADMIN_TOKEN), shot="lab-login")
    figures = every_page(browser, base, prefix="lab-")
    (SCREENSHOTS / "lab-figures.json").write_text(json.dumps(figures, indent=2))
    print(f"console figures against {base}:\n{json.dumps(figures, indent=2)}")
    check_figures(figures)


def test_openai_client_lists_models_and_chats(client):
    assert {m.id for m in client.models.list()} == {"tiny-llama", "iris", "digits", "tiny-embed"}
    reply = client.chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": "Hello"}], max_tokens=8
    )
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens == 8


def test_openai_client_streams_and_completes(client):
    stream = client.chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage.completion_tokens == 8
    completion = client.completions.create(model="tiny-llama", prompt="Once upon", max_tokens=4)
    assert completion.choices[0].text


def test_openai_client_sees_openai_errors(lab):
    bad = openai_client(lab, "pdm-wrong")
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_predictive_model_answers_v2_infer(lab):
    sidecar = json.loads((tiny_cache(lab["name"]) / "iris-1" / "iris.json").read_text())
    body = {"inputs": [{**sidecar["input"], "shape": [1, 4], "data": sidecar["example_input"][0]}]}
    request = urllib.request.Request(
        lab["url"].removesuffix("/v1") + "/v2/models/iris/infer",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {lab['key']}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30, context=ssl.create_default_context(cafile=lab["ca"])) as r:
        answer = json.loads(r.read())
    assert answer["outputs"][0]["data"] == sidecar["expected_prediction"]


def test_grpc_metadata_infer_and_errors_with_tritonclient(lab):
    """The Open Inference Protocol over gRPC on the port `podium lab up` printed, with TLS from
    the stack CA, through tritonclient.grpc; each call is in `podium usage`."""
    import numpy as np
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(
        line(lab["output"], "grpc: "), ssl=True, root_certificates=lab["ca"],
        channel_args=[("grpc.ssl_target_name_override", line(lab["output"], "grpc-tls-name: "))])
    created = podium("keys", "create", lab["stack"], "--name", "grpc-lab", "--models", "iris,digits", "--json")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["key"]
    metadata = client.get_model_metadata("iris", headers={"authorization": f"Bearer {key}"}, as_json=True)
    assert metadata["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": ["-1", "4"]}]
    sidecar = json.loads((tiny_cache(lab["name"]) / "iris-1" / "iris.json").read_text())
    tensor = triton.InferInput("input-0", [1, 4], "FP64")
    tensor.set_data_from_numpy(np.array(sidecar["example_input"], dtype=np.float64))
    result = client.infer("iris", [tensor], headers={"authorization": f"Bearer {key}"})
    assert result.as_numpy("predict").ravel().tolist() == sidecar["expected_prediction"]
    for headers, code in (({"authorization": "Bearer pdm-not-a-key"}, "UNAUTHENTICATED"),
                          ({"authorization": f"Bearer {lab['key']}"}, None)):
        try:
            client.get_model_metadata("iris", headers=headers)
            assert code is None, f"expected {code}"
        except InferenceServerException as exc:
            assert str(exc.status()) == f"StatusCode.{code}"
    with pytest.raises(InferenceServerException) as denied:
        client.get_model_metadata("tiny-llama", headers={"authorization": f"Bearer {key}"})
    assert str(denied.value.status()) == "StatusCode.PERMISSION_DENIED"
    # The ONNX model on MLServer through Podium's ONNX Runtime runtime: metadata from its graph,
    # and its label for the example image pushed with it.
    metadata = client.get_model_metadata("digits", headers={"authorization": f"Bearer {key}"}, as_json=True)
    assert metadata["inputs"] == [{"name": "image", "datatype": "FP32", "shape": ["-1", "1", "8", "8"]}]
    assert [o["name"] for o in metadata["outputs"]] == ["label", "probabilities"]
    digits = json.loads((tiny_cache(lab["name"]) / "digits-1" / "digits.json").read_text())
    image = triton.InferInput("image", [1, 1, 8, 8], "FP32")
    image.set_data_from_numpy(np.array(digits["example_input"], dtype=np.float32))
    result = client.infer("digits", [image], headers={"authorization": f"Bearer {key}"})
    assert result.as_numpy("label").ravel().tolist() == digits["expected_prediction"]
    assert result.as_numpy("probabilities").shape == (1, 10)
    usage = podium("usage", lab["stack"], "--by", "key", "--by", "model", "--json")
    assert usage.returncode == 0, usage.stderr
    rows = {(r["key"], r["model"]): r["requests"] for r in json.loads(usage.stdout)}
    assert rows[("grpc-lab", "iris")] >= 2
    assert rows[("grpc-lab", "digits")] == 2, rows


def test_openai_client_embeds_and_the_embeddings_are_metered(client, lab):
    from podium.models.tiny_llama import SIZES

    def embed_usage() -> dict[str, int]:
        # Earlier tests (verify's checks among them) may have called the model too: compare.
        result = podium("usage", lab["stack"], "--by", "model", "--json")
        assert result.returncode == 0, result.stderr
        rows = {r["model"]: r for r in json.loads(result.stdout)}
        row = rows.get("tiny-embed", {})
        return {k: row.get(k, 0) for k in ("requests", "prompt_tokens", "completion_tokens")}

    before = embed_usage()
    answer = client.embeddings.create(model="tiny-embed", input=["hello lab", "goodbye lab"])
    assert [d.index for d in answer.data] == [0, 1]
    assert all(len(d.embedding) == SIZES["tiny"].n_embd for d in answer.data)
    assert answer.data[0].embedding != answer.data[1].embedding
    after = embed_usage()
    for _ in range(20):  # the record reaches the store within a batch
        if after["requests"] > before["requests"]:
            break
        time.sleep(0.5)
        after = embed_usage()
    assert answer.usage.prompt_tokens > 0
    assert {k: after[k] - before[k] for k in after} == {
        "requests": 1, "prompt_tokens": answer.usage.prompt_tokens, "completion_tokens": 0}


def test_usage_is_metered_per_key(client, lab):
    client.completions.create(model="tiny-llama", prompt="count me", max_tokens=3)
    result = podium("usage", lab["stack"], "--by", "model", "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["model"]: r for r in json.loads(result.stdout)}
    assert rows["tiny-llama"]["requests"] >= 1
    assert rows["tiny-llama"]["completion_tokens"] >= 3


def test_prometheus_has_the_gateways_ttft_histogram(client, lab):
    for _ in range(3):
        client.completions.create(model="tiny-llama", prompt="measure", max_tokens=2)
    prometheus = PrometheusClient(lab["prometheus"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        samples = prometheus.query('sum(podium_gateway_ttft_seconds_count{model="tiny-llama"})')
        if samples and samples[0].value > 0:
            return
        time.sleep(2)
    raise AssertionError("Prometheus has no TTFT observations for tiny-llama from the gateway")


def test_stopped_engine_replica_fires_its_alert(lab):
    unit = "podium-llamacpp-tiny-llama-cpp-1"
    assert podium("lab", "ssh", "node2", "--stack", lab["stack"], "--", "systemctl", "stop", unit).returncode == 0
    try:
        prometheus = PrometheusClient(lab["prometheus"])
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            firing = [s for s in prometheus.query('ALERTS{alertname="EngineReplicaDown",alertstate="firing"}')
                      if s.labels.get("node") == "node2"]
            if firing:
                break
            time.sleep(3)
        else:
            raise AssertionError("EngineReplicaDown did not fire for node2 within 150 s")
    finally:
        podium("lab", "ssh", "node2", "--stack", lab["stack"], "--", "systemctl", "start", unit)


def test_second_up_changes_nothing(lab):
    result = podium("up", lab["stack"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("changes: 0")


def test_reapply_runs_every_role_and_changes_nothing(lab):
    """Convergence is honest: every role runs again on the unchanged appliance and none reports a
    change (checks are facts, not commands that count as changes)."""
    result = podium("up", lab["stack"], "--reapply")
    assert result.returncode == 0, result.stderr[-3000:]
    ran = [x.split(":")[0].split()[-1] for x in result.stderr.splitlines() if ": changed " in x]
    assert set(ran) >= {"base", "network", "storage", "registry", "engine-llamacpp", "engine-predictive",
                        "monitoring", "gateway"}, result.stderr[-3000:]
    assert result.stdout.strip().endswith("changes: 0"), result.stderr[-3000:]


def test_status_reads_at_80_columns(lab):
    """podium status: one line per node and component with its recorded version, none wider than
    80 columns, read from the real nodes."""
    result = subprocess.run([sys.executable, "-m", "podium", "status", lab["stack"]], capture_output=True,
                            text=True, timeout=120, cwd=REPO, env={**os.environ, "COLUMNS": "80"})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert not [x for x in lines if len(x) > 80], result.stdout
    assert all(any(f"│ {node} " in x for x in lines) for node in ("ctrl", "node1", "node2")), result.stdout
    for component in ("gateway", "engine-llamacpp", "engine-predictive", "registry"):
        assert any(component in x and "same" in x for x in lines), result.stdout


def test_inventory_runs_with_plain_pyinfra(lab):
    """The roles are plain pyinfra deploys: the generated inventory runs without Podium's CLI."""
    pyinfra = Path(sys.executable).with_name("pyinfra")
    result = subprocess.run(
        [str(pyinfra), "-y", "--limit", "node1", f"inventory/{lab['name']}.py", "roles/base/deploy.py"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
