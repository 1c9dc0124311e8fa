"""`podium model` against a real docker-registry: push, pull, aliases, refusals, credentials."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from podium.cli import model as model_cli
from podium.errors import PodiumError
from tests.fixtures_registry import RunningRegistry, registry, registry_auth, registry_tls

__all__ = ["registry", "registry_auth", "registry_tls"]  # fixtures, imported so pytest finds them


@dataclass
class Run:
    exit_code: int
    stdout: str
    error: str


def podium(*args: str, env: dict[str, str] | None = None) -> Run:
    """Run `podium model ...` in-process as `podium.cli.main` would: errors become exit codes."""
    app = typer.Typer()
    model_cli.register(app)
    result = CliRunner().invoke(app, ["model", *args], env=env)
    if isinstance(result.exception, PodiumError):
        return Run(result.exception.exit_code, result.stdout, str(result.exception))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Run(result.exit_code, result.stdout, result.stderr)


def at(reg: RunningRegistry) -> tuple[str, ...]:
    return ("--registry", reg.address, "--insecure")


def tree_digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def push(reg: RunningRegistry, path: Path, name: str, version: str, *extra: str) -> str:
    run = podium("push", str(path), "--name", name, "--version", version, *extra, *at(reg))
    assert run.exit_code == 0, run.error
    digest = run.stdout.strip().splitlines()[-1]
    assert digest.startswith("sha256:") and len(digest) == 71, run.stdout
    return digest


def test_single_file_round_trip(registry: RunningRegistry, tmp_path: Path) -> None:
    model = tmp_path / "tiny.gguf"
    model.write_bytes(os.urandom(3 << 20))
    digest = push(registry, model, "rt-file", "v1")

    run = podium("pull", "rt-file:v1", "--to", str(tmp_path / "out"), *at(registry))
    assert run.exit_code == 0, run.error
    assert run.stdout.strip().splitlines()[-1] == str(tmp_path / "out")
    assert tree_digests(tmp_path / "out") == {
        "tiny.gguf": hashlib.sha256(model.read_bytes()).hexdigest()
    }
    # Pulling by digest gives the same bytes; pushing the same file again gives the same digest.
    run = podium("pull", f"rt-file@{digest}", "--to", str(tmp_path / "by-digest"), *at(registry))
    assert run.exit_code == 0, run.error
    assert tree_digests(tmp_path / "by-digest") == tree_digests(tmp_path / "out")
    assert push(registry, model, "rt-file", "v1") == digest

    shown = json.loads(podium("show", "rt-file:v1", "--json", *at(registry)).stdout)
    assert shown["digest"] == digest
    assert shown["format"] == "gguf"
    assert shown["size"] == 3 << 20
    assert shown["files"][0]["path"] == "tiny.gguf"


def test_directory_round_trip_keeps_relative_paths(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    src = tmp_path / "hf"
    (src / "tokenizer").mkdir(parents=True)
    (src / "model.safetensors").write_bytes(os.urandom(1 << 20))
    (src / "config.json").write_text('{"hidden_size": 8}')
    (src / "tokenizer.json").write_text("{}")
    (src / "tokenizer" / "special_tokens_map.json").write_text("{}")  # same bytes, one blob
    push(registry, src, "rt-dir", "v1")

    run = podium("pull", "rt-dir:v1", "--to", str(tmp_path / "out"), *at(registry))
    assert run.exit_code == 0, run.error
    assert tree_digests(tmp_path / "out") == tree_digests(src)

    shown = json.loads(podium("show", "rt-dir:v1", "--json", *at(registry)).stdout)
    assert shown["format"] == "safetensors"
    assert {f["path"] for f in shown["files"]} == set(tree_digests(src))


def test_alias_moves_and_show_follows(registry: RunningRegistry, tmp_path: Path) -> None:
    digests = {}
    for version in ("v1", "v2"):
        f = tmp_path / version / "m.gguf"
        f.parent.mkdir()
        f.write_bytes(os.urandom(4096))
        digests[version] = push(registry, f, "aliased", version)

    assert podium("tag", "aliased:v1", "stable", *at(registry)).exit_code == 0
    v1 = json.loads(podium("show", "aliased:v1", "--json", *at(registry)).stdout)
    assert v1["aliases"] == ["stable"]
    stable = json.loads(podium("show", "aliased:stable", "--json", *at(registry)).stdout)
    assert stable["digest"] == digests["v1"]
    assert stable["aliases"] == ["v1"]

    assert podium("tag", "aliased:v2", "stable", *at(registry)).exit_code == 0
    v1 = json.loads(podium("show", "aliased:v1", "--json", *at(registry)).stdout)
    v2 = json.loads(podium("show", "aliased:v2", "--json", *at(registry)).stdout)
    assert v1["aliases"] == []
    assert v2["aliases"] == ["stable"]

    listed = json.loads(podium("ls", "aliased", "--json", *at(registry)).stdout)
    assert {(t["tag"], t["digest"]) for t in listed} == {
        ("stable", digests["v2"]),
        ("v1", digests["v1"]),
        ("v2", digests["v2"]),
    }


def test_ls_lists_models_from_the_catalog(registry: RunningRegistry, tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(os.urandom(1024))
    push(registry, f, "listed", "v1")
    listed = json.loads(podium("ls", "--json", *at(registry)).stdout)
    assert {"name": "listed", "tag": "v1"} in [{"name": t["name"], "tag": t["tag"]} for t in listed]
    assert "listed" in podium("ls", *at(registry)).stdout


def test_rm_deletes_the_version_and_its_aliases(registry: RunningRegistry, tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(os.urandom(1024))
    digest = push(registry, f, "removed", "v1")
    assert podium("tag", "removed:v1", "canary", *at(registry)).exit_code == 0

    run = podium("rm", "removed:v1", *at(registry))
    assert run.exit_code == 0, run.error
    assert digest in run.stdout and "canary" in run.stdout
    for ref in ("removed:v1", "removed:canary", f"removed@{digest}"):
        run = podium("show", ref, *at(registry))
        assert run.exit_code == 2
        assert "is not in the registry" in run.error


def test_a_version_cannot_be_overwritten_with_other_files(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(os.urandom(1024))
    push(registry, f, "immutable", "v1")
    f.write_bytes(os.urandom(1024))
    run = podium("push", str(f), "--name", "immutable", "--version", "v1", *at(registry))
    assert run.exit_code == 2
    assert "already exists" in run.error and "new version" in run.error


def test_joblib_is_refused_unless_trusted(registry: RunningRegistry, tmp_path: Path) -> None:
    f = tmp_path / "clf.joblib"
    f.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    run = podium("push", str(f), "--name", "pickled", "--version", "v1", *at(registry))
    assert run.exit_code == 2
    assert "pickle-based" in run.error and "--trusted" in run.error
    assert podium("ls", "pickled", *at(registry)).exit_code == 2  # nothing was pushed

    push(registry, f, "pickled", "v1", "--trusted")
    shown = json.loads(podium("show", "pickled:v1", "--json", *at(registry)).stdout)
    assert shown["format"] == "joblib"
    assert shown["trust"]["trusted"] is True
    assert shown["trust"]["pickle_files"] == ["clf.joblib"]


def test_skops_with_untrusted_types_is_refused(registry: RunningRegistry, tmp_path: Path) -> None:
    sio = pytest.importorskip("skops.io")
    f = tmp_path / "clf.skops"
    # A function reference: skops will not load it without being told to trust it.
    sio.dump({"hook": functools.partial(print)}, f)
    flagged = sio.get_untrusted_types(file=f)
    assert sorted(flagged) == ["builtins.print", "functools.partial"]

    run = podium("push", str(f), "--name", "skopsed", "--version", "v1", *at(registry))
    assert run.exit_code == 2
    assert "builtins.print" in run.error and "--trusted-type" in run.error
    only_one = ("--trusted-type", "functools.partial")
    run = podium("push", str(f), "--name", "skopsed", "--version", "v1", *only_one, *at(registry))
    assert run.exit_code == 2 and "builtins.print" in run.error

    types = ("--trusted-type", "builtins.print", "--trusted-type", "functools.partial")
    push(registry, f, "skopsed", "v1", *types)
    shown = json.loads(podium("show", "skopsed:v1", "--json", *at(registry)).stdout)
    assert shown["format"] == "skops"
    assert shown["trust"]["skops_types"] == ["builtins.print", "functools.partial"]
    assert shown["signature"] is None  # a dict, not an estimator: nothing to describe


def test_show_names_a_scikit_learn_models_inputs_and_outputs(registry: RunningRegistry,
                                                              tmp_path: Path) -> None:
    from podium.models import make_tiny

    model = make_tiny("sklearn", tmp_path / "iris.skops")
    push(registry, model, "iris-shown", "v1")
    shown = podium("show", "iris-shown:v1", *at(registry)).stdout
    assert "inputs   input-0 FP64 [-1, 4]" in shown
    assert "outputs  predict INT64 [-1, 1]; predict_proba FP64 [-1, 3]" in shown


def test_show_names_an_onnx_models_inputs_and_outputs_from_its_graph(registry: RunningRegistry,
                                                                     tmp_path: Path) -> None:
    from podium.models import make_tiny

    model = make_tiny("onnx", tmp_path / "digits.onnx")
    # No --trusted: an ONNX graph runs no code of its author's when loaded.
    push(registry, model, "digits-shown", "v1")
    shown = json.loads(podium("show", "digits-shown:v1", "--json", *at(registry)).stdout)
    assert shown["format"] == "onnx" and shown["trust"]["trusted"] is False
    assert shown["signature"] == {
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1, 1]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
    }


def test_an_onnx_file_the_checker_fails_is_refused_in_one_sentence(registry: RunningRegistry,
                                                                   tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    not_onnx = tmp_path / "garbage.onnx"
    not_onnx.write_bytes(b"\x08\x07 this is not a protobuf of a model")
    # Well-formed protobuf, but its one node reads a tensor nothing defines.
    dangling = tmp_path / "dangling.onnx"
    graph = helper.make_graph(
        [helper.make_node("Relu", ["nowhere"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), dangling)
    for f in (not_onnx, dangling):
        run = podium("push", str(f), "--name", "broken", "--version", "v1", *at(registry))
        assert run.exit_code == 2, run
        assert f"{str(f)!r} is not a valid ONNX model (onnx.checker: " in run.error
        assert "Traceback" not in run.error + run.stdout and len(run.error.splitlines()) == 1
    assert "nowhere" in podium("push", str(dangling), "--name", "broken", "--version", "v1",
                               *at(registry)).error
    assert podium("ls", "broken", *at(registry)).exit_code == 2  # nothing was pushed


def test_bad_input_is_one_sentence_with_exit_2(registry: RunningRegistry, tmp_path: Path) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    cases = [
        (("push", str(tmp_path / "nope.gguf"), "--name", "x", "--version", "v1"), "does not exist"),
        (("push", str(f), "--name", "Bad_Name", "--version", "v1"), "model name"),
        (("push", str(f), "--name", "x", "--version", "v1", "--format", "tflite"), "--format"),
        (("pull", "x", "--to", str(tmp_path / "o")), "has no version"),
        (("show", "never-pushed:v1"), "is not in the registry"),
    ]
    for args, words in cases:
        run = podium(*args, *at(registry))
        assert run.exit_code == 2, (args, run)
        assert words in run.error, (args, run.error)
        assert "Traceback" not in run.error + run.stdout
    run = podium("ls")
    assert run.exit_code == 2 and "--registry" in run.error


def test_unreachable_registry_fails_with_exit_1(tmp_path: Path) -> None:
    run = podium("ls", "--registry", "127.0.0.1:1", "--insecure")
    assert run.exit_code == 1
    assert "cannot reach the registry" in run.error


def test_credentials(registry_auth: RunningRegistry, tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(os.urandom(2048))
    args = ("push", str(f), "--name", "secret", "--version", "v1", *at(registry_auth))

    run = podium(*args, env={"PODIUM_REGISTRY_USER": "", "PODIUM_REGISTRY_PASSWORD": ""})
    assert run.exit_code == 2 and "asks for credentials" in run.error

    wrong = {"PODIUM_REGISTRY_USER": "podium", "PODIUM_REGISTRY_PASSWORD": "wrong"}
    run = podium(*args, env=wrong)
    assert run.exit_code == 2
    assert "refused the credentials of user 'podium'" in run.error
    assert "wrong" not in run.error  # the password is never echoed

    assert registry_auth.password is not None
    right = {"PODIUM_REGISTRY_USER": "podium", "PODIUM_REGISTRY_PASSWORD": registry_auth.password}
    run = podium(*args, env=right)
    assert run.exit_code == 0, run.error
    run = podium("pull", "secret:v1", "--to", str(tmp_path / "out"), *at(registry_auth), env=right)
    assert run.exit_code == 0, run.error
    assert (tmp_path / "out" / "m.gguf").read_bytes() == f.read_bytes()


def test_tls_registry_with_podiums_ca(registry_tls: RunningRegistry, tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(os.urandom(2048))
    args = ("push", str(f), "--name", "over-tls", "--version", "v1", "--registry")
    run = podium(*args, registry_tls.address)
    assert run.exit_code == 1
    assert "TLS check" in run.error and "--ca" in run.error

    assert registry_tls.ca is not None
    ca = ("--ca", str(registry_tls.ca))
    run = podium(*args, registry_tls.address, *ca)
    assert run.exit_code == 0, run.error
    out = tmp_path / "out"
    run = podium("pull", "over-tls:v1", "--to", str(out), "--registry", registry_tls.address, *ca)
    assert run.exit_code == 0, run.error
    assert (out / "m.gguf").read_bytes() == f.read_bytes()


def test_make_tiny_then_push_and_pull(registry: RunningRegistry, tmp_path: Path) -> None:
    pytest.importorskip("podium.models.tiny")
    pytest.importorskip("gguf")
    out = tmp_path / "tiny.gguf"
    run = podium("make-tiny", "--kind", "gguf", str(out))
    assert run.exit_code == 0, run.error
    push(registry, out, "made-tiny", "v1")
    run = podium("pull", "made-tiny:v1", "--to", str(tmp_path / "out"), *at(registry))
    assert run.exit_code == 0, run.error
    assert (tmp_path / "out" / "tiny.gguf").read_bytes() == out.read_bytes()


def test_registry_from_a_stack(registry: RunningRegistry, tmp_path: Path) -> None:
    from podium.registry import ModelRef, Registry
    from podium.stack import Stack

    host, port = registry.address.split(":")
    stack = Stack.model_validate(
        {
            "name": "regtest",
            "nodes": [{"name": "reg", "address": host}],
            "registry": {"node": "reg", "port": int(port), "tls": False},
        }
    )
    reg = Registry.for_stack(stack)
    assert reg.address == registry.address
    f = tmp_path / "m.gguf"
    f.write_bytes(os.urandom(512))
    digest = reg.push(f, "from-stack", "v1")
    assert reg.resolve(ModelRef.parse("from-stack:v1")) == digest

    no_registry = Stack.model_validate({"name": "bare", "nodes": [{"name": "a", "address": host}]})
    with pytest.raises(PodiumError, match="declares no registry"):
        Registry.for_stack(no_registry)
