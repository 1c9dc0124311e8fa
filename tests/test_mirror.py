"""The artifact mirror served from a bundle: the stack form and its checks, the plan's order
(the mirror before base anywhere), the files its role and role base write, and egress."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from podium.bundle.manifest import write_manifest
from podium.bundle.models import write_models
from podium.bundle.wheels import locks_mark, pip_from_mirror
from podium.errors import InvalidInput, PodiumError
from podium.files import files_for
from podium.inventory import host_entries
from podium.lab import network as labnet
from podium.lab.image import ImageRecipe, bundle_recipe, debootstrap_command
from podium.lab.up import lab_network
from podium.plan.actions import make_plan
from podium.plan.components import BY_NAME
from podium.plan.egress import egress_settings
from podium.plan.mirror_settings import MIRROR_CA
from podium.registry import ModelRef, Registry
from podium.render import REPO
from podium.stack.loader import load_stack
from podium.stack.model import Stack
from podium.stack.reading import StackError
from podium.stack.versions import load_versions
from podium.up import preflight
from tests.fixtures_registry import RunningRegistry, registry
from tests.test_plan import applied

__all__ = ["registry"]  # fixture, imported so pytest finds it

# stacks/lab without the bundle it declares: each test declares its own artifact_mirror.
LAB = "\n".join(
    line for line in (REPO / "stacks" / "lab" / "stack.yaml").read_text(encoding="utf-8").splitlines()
    if not line.startswith("artifact_mirror:")
) + "\n"


def _stack(tmp_path: Path, mirror: str, text: str = LAB) -> Stack:
    folder = tmp_path / "stack"
    folder.mkdir(exist_ok=True)
    (folder / "stack.yaml").write_text(text.replace("host_network:", f"{mirror}\nhost_network:", 1))
    return load_stack(str(folder))


def test_bundle_form_serves_from_the_registry_node_over_https(tmp_path: Path) -> None:
    stack = _stack(tmp_path, "artifact_mirror: {bundle: ../bundle}")
    assert stack.mirror_node == "ctrl"
    assert stack.mirror_url == "https://10.77.0.10:8440"
    assert stack.bundle_folder == (tmp_path / "bundle").resolve(), "the path is taken from the stack file"


def test_bundle_node_defaults_to_the_control_node_without_a_registry(tmp_path: Path) -> None:
    data = yaml.safe_load(LAB)
    del data["registry"]
    text = yaml.safe_dump(data, sort_keys=False)
    assert _stack(tmp_path, "artifact_mirror: {bundle: b}", text).mirror_node == "ctrl"
    data["nodes"][0]["labels"] = {"role": "worker"}
    data["nodes"][2]["labels"] = {"role": "control"}
    assert _stack(tmp_path, "artifact_mirror: {bundle: b}", yaml.safe_dump(data)).mirror_node == "node2"
    stack = _stack(tmp_path, "artifact_mirror: {bundle: b, node: node1, port: 8441}", text)
    assert (stack.mirror_node, stack.mirror_url) == ("node1", "https://10.77.0.11:8441")


def test_url_form_keeps_working(tmp_path: Path) -> None:
    stack = _stack(tmp_path, "artifact_mirror: https://10.77.0.1:8443/podium")
    assert stack.mirror_bundle is None and stack.mirror_node is None
    assert stack.mirror_url == "https://10.77.0.1:8443/podium"
    assert "mirror" not in {a.component for a in make_plan(stack, load_versions())}


def test_a_path_that_is_not_a_bundle_is_refused_in_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a bundle")
    with pytest.raises(StackError) as caught:
        _stack(tmp_path, "artifact_mirror: {bundle: ../notes.txt}")
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    assert "artifact_mirror.bundle = '../notes.txt': is " in message
    assert "which is not a bundle folder; give the folder `podium bundle" in message


def test_a_bad_path_exits_2_from_the_cli_without_a_traceback(tmp_path: Path) -> None:
    folder = tmp_path / "stack"
    folder.mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "something").write_text("x")
    (folder / "stack.yaml").write_text(LAB.replace("host_network:", "artifact_mirror: {bundle: ../full}\n"
                                                                      "host_network:", 1))
    done = subprocess.run([sys.executable, "-m", "podium", "plan", str(folder)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "artifact_mirror.bundle = '../full'" in done.stderr


def test_unknown_node_and_clashing_port_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StackError, match=r"artifact_mirror\.node = 'nowhere': is not a node of this stack"):
        _stack(tmp_path, "artifact_mirror: {bundle: b, node: nowhere}")
    clash = r"artifact_mirror\.port = 5000: is already used on node ctrl by registry; pick another port"
    with pytest.raises(StackError, match=clash):
        _stack(tmp_path, "artifact_mirror: {bundle: b, port: 5000}")


def test_the_mirror_is_laid_down_first_on_its_node_only(tmp_path: Path) -> None:
    stack = _stack(tmp_path, "artifact_mirror: {bundle: b}")
    order = [(a.component, a.host) for a in make_plan(stack, load_versions())]
    assert order[0] == ("mirror", "ctrl")
    assert [h for c, h in order if c == "mirror"] == ["ctrl"]
    assert order.index(("mirror", "ctrl")) < min(order.index(("base", n)) for n in stack.node_names)


def test_the_mirror_port_opens_to_the_stacks_nodes_only(tmp_path: Path) -> None:
    stack = _stack(tmp_path, "artifact_mirror: {bundle: b}")
    openings = BY_NAME["base"].settings(stack, "ctrl")["openings"]
    mirror = [o for o in openings if o["what"] == "artifact mirror"]
    assert mirror == [{"port": 8440, "protocol": "tcp", "sources": ["10.77.0.10", "10.77.0.11", "10.77.0.12"],
                       "what": "artifact mirror"}]
    assert not [o for o in BY_NAME["base"].settings(stack, "node1")["openings"] if o["port"] == 8440]


def test_mirror_role_files_serve_the_bundle_over_tls_to_the_stack(tmp_path: Path) -> None:
    stack = _stack(tmp_path, "artifact_mirror: {bundle: b}")
    rendered = files_for("mirror", "ctrl", BY_NAME["mirror"].settings(stack, "ctrl"))
    site = rendered["podium-mirror.conf"]
    assert "listen 10.77.0.10:8440 ssl;" in site
    assert "allow 10.77.0.11;" in site and site.index("allow 10.77.0.12;") < site.index("deny all;")
    assert "root /srv/podium-mirror;" in site
    source = [line for line in rendered["bundle.list"].splitlines() if line.startswith("deb")]
    assert source == ["deb [signed-by=/srv/podium-mirror/apt/podium-bundle.asc] file:/srv/podium-mirror/apt "
                      "bookworm main"]


def test_every_node_reads_apt_from_the_mirror_alone(tmp_path: Path) -> None:
    stack = _stack(tmp_path, "artifact_mirror: {bundle: b}")
    for node in stack.node_names:
        settings = BY_NAME["base"].settings(stack, node)
        rendered = files_for("base", node, settings)
        debs = [line for line in rendered["podium-mirror.list"].splitlines() if line and not line.startswith("#")]
        assert debs == ["deb [signed-by=/etc/apt/keyrings/podium-bundle.asc] https://10.77.0.10:8440/apt "
                        "bookworm main"], node
        assert f'Acquire::https::10.77.0.10::CaInfo "{MIRROR_CA}";' in rendered["podium-mirror.apt.conf"]
    entry = dict(host_entries(stack, make_plan(stack, load_versions())))["node1"]
    assert entry["podium_bundle"] == str(stack.bundle_folder), "roles find the bundle as host data"


def test_without_a_bundle_base_writes_no_mirror_source(tmp_path: Path) -> None:
    stack = _stack(tmp_path, "")
    settings = BY_NAME["base"].settings(stack, "node1")
    assert settings["mirror"] is None
    assert not files_for("base", "node1", settings)["podium-mirror.list"].strip()


def test_egress_opens_nothing_outside_the_stack_for_a_bundle(tmp_path: Path) -> None:
    bundle = egress_settings(_stack(tmp_path, "artifact_mirror: {bundle: b}"))
    assert bundle["mirrors"] == [] and bundle["networks"] == ["10.77.0.0/24"]
    site = egress_settings(_stack(tmp_path, "artifact_mirror: https://10.77.0.1:8443/podium"))
    assert site["mirrors"] == [{"family": "ip", "address": "10.77.0.1", "port": 8443, "what": "artifact_mirror"}]


def test_up_refuses_a_missing_bundle_and_one_with_a_changed_byte(tmp_path: Path) -> None:
    stack = _stack(tmp_path, "artifact_mirror: {bundle: ../bundle}")
    with pytest.raises(InvalidInput, match=r"artifact_mirror\.bundle '\.\./bundle' \(.*\) holds no bundle yet; write"):
        preflight(stack, [])
    folder = tmp_path / "bundle"
    (folder / "apt").mkdir(parents=True)
    (folder / "apt" / "Packages").write_text("Package: nginx\n")
    write_manifest(folder, "2026.11", stack.name, [])
    preflight(stack, [])
    (folder / "apt" / "Packages").write_text("Package: nginy\n")
    with pytest.raises(InvalidInput, match=r"fails `podium bundle verify` \(apt/Packages: changed: sha256"):
        preflight(stack, [])


def test_a_bundles_model_layout_loads_into_a_real_registry_with_its_digest(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    stack = _stack(tmp_path, "artifact_mirror: {bundle: ../bundle}")
    digests = write_models(stack, tmp_path / "bundle" / "models")
    layout = tmp_path / "bundle" / "models" / "iris" / "1"
    client = Registry(registry.address, insecure=True)
    name = f"iris{uuid.uuid4().hex[:6]}"
    assert client.push_layout(layout, name, "1") == digests[1]
    assert client.push_layout(layout, name, "1") == digests[1], "a second load is a no-op"
    assert client.resolve(ModelRef.parse(f"{name}:1")) == digests[1]
    blob = next(p for p in (layout / "blobs" / "sha256").iterdir() if p.stat().st_size > 1000)
    blob.write_bytes(blob.read_bytes()[:-1] + b"!")
    with pytest.raises(InvalidInput, match="its bytes do not hash to its name; rebuild the bundle"):
        client.push_layout(layout, f"{name}x", "1")


def test_engines_and_gateway_install_from_the_mirrors_wheelhouses_by_hash(tmp_path: Path) -> None:
    stack = _stack(tmp_path, "artifact_mirror: {bundle: ../bundle}")
    for component, node in (("engine-llamacpp", "node1"), ("engine-predictive", "node2"), ("gateway", "ctrl")):
        assert BY_NAME[component].settings(stack, node)["mirror"]["url"] == "https://10.77.0.10:8440", component
    mirror = BY_NAME["gateway"].settings(stack, "ctrl")["mirror"]
    command = pip_from_mirror("/opt/v/bin/pip", mirror, "engine-predictive").split()
    folder = "https://10.77.0.10:8440/wheels/engine-predictive/"
    assert command[:2] == ["/opt/v/bin/pip", "install"]
    assert {"--no-index", "--no-deps", "--require-hashes"} <= set(command)
    assert command[command.index("--cert") + 1] == MIRROR_CA
    assert command[command.index("--find-links") + 1] == folder
    assert command[command.index("-r") + 1] == folder + "requirements.lock"
    lock = tmp_path / "bundle" / "wheels" / "podium" / "requirements.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("podium==0.1.0 --hash=sha256:00\n")
    before = locks_mark(tmp_path / "bundle", ["podium"])
    lock.write_text("podium==0.1.0 --hash=sha256:01\n")
    assert locks_mark(tmp_path / "bundle", ["podium"]) != before, "a changed lock must reinstall the venv"


def test_offline_lab_machines_get_no_proxy_source_and_online_ones_keep_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PODIUM_STATE_DIR", str(tmp_path / "state"))
    stack = _stack(tmp_path, "artifact_mirror: {bundle: b}")
    offline, online = lab_network(stack), lab_network(stack, online=True)
    assert offline.mirror and not offline.online
    assert not [x for x in labnet.apt_sources(offline).splitlines() if not x.startswith("#")]
    assert "masquerade" not in labnet.nft_ruleset(offline)
    assert "nameserver" not in labnet.resolv_conf(offline), "a query to the host's resolver would leave the lab"
    assert not online.mirror and "3142/debian" in labnet.apt_sources(online)
    assert not lab_network(_stack(tmp_path, "")).mirror, "a stack without a bundle keeps the package proxy"


def test_the_lab_image_is_debootstrapped_from_the_bundle_wherever_it_sits(tmp_path: Path) -> None:
    repos = []
    for where in ("one", "two"):
        index = tmp_path / where / "apt" / "dists" / "bookworm" / "main" / "binary-amd64" / "Packages"
        index.parent.mkdir(parents=True)
        index.write_text("Package: systemd\nVersion: 252.39-1~deb12u1\n")
        repos.append(tmp_path / where / "apt")
    recipe = bundle_recipe(repos[0])
    assert recipe == bundle_recipe(repos[1]), "the same packages must reuse the same image"
    assert recipe.digest() != ImageRecipe().digest()
    command = debootstrap_command(recipe, Path("/t"), repos[1], Path("/k.gpg"))
    assert command[-4:] == ["--keyring=/k.gpg", "bookworm", "/t", f"file://{repos[1].resolve()}"]
    with pytest.raises(PodiumError, match="is built from a bundle; give its apt folder"):
        debootstrap_command(recipe, Path("/t"))
    with pytest.raises(PodiumError, match="holds no apt repository"):
        bundle_recipe(tmp_path)


def test_a_new_bundle_reconfigures_what_installs_from_it_and_a_moved_one_nothing(tmp_path: Path) -> None:
    versions = load_versions()
    stack = _stack(tmp_path, "artifact_mirror: {bundle: ../bundle}")
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "versions.yaml").write_text("release: one\n")
    write_manifest(folder, "2026.11", stack.name, [])
    state = applied(make_plan(stack, versions))
    moved = tmp_path / "elsewhere" / "bundle"
    moved.parent.mkdir()
    folder.rename(moved)
    text = (tmp_path / "stack" / "stack.yaml").read_text().replace("{bundle: ../bundle}", f"{{bundle: {moved}}}")
    (tmp_path / "stack" / "stack.yaml").write_text(text)
    assert {a.action for a in make_plan(load_stack(tmp_path / "stack"), versions, state)} == {"keep"}
    (moved / "versions.yaml").write_text("release: two\n")
    write_manifest(moved, "2026.11", stack.name, [])
    changed = {a.component for a in make_plan(load_stack(tmp_path / "stack"), versions, state) if a.action != "keep"}
    assert {"mirror", "base", "engine-llamacpp", "engine-predictive", "gateway"} <= changed
