"""Mutate valid stacks 1,000 times, and their bytes a few hundred times with what a hostile file
holds (aliases, tags, deep brackets, control characters, bytes that are not UTF-8): validation
never raises anything but a clean InvalidInput, and the CLI's exit status is always 0 or 2."""

import copy
import subprocess
import sys
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podium.errors import InvalidInput
from podium.stack import load_stack

BASES = [yaml.safe_load(Path(f"stacks/{n}/stack.yaml").read_text()) for n in ("lab", "single-gpu", "hybrid")]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 70000),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["node1", "ctrl", "gguf", "llamacpp", "10.77.0.10", "4GiB", "*"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from paths(v, (*prefix, i))


@st.composite
def mutated(draw):
    doc = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        candidates = list(paths(doc))[1:]
        path = draw(st.sampled_from(candidates))
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        op = draw(st.sampled_from(["replace", "delete", "add-key"]))
        last = path[-1]
        if op == "replace":
            parent[last] = draw(values)
        elif op == "delete":
            del parent[last]
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(values)
        candidates = None
    return doc


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutated())
def test_mutated_stacks_fail_cleanly_or_load(tmp_path_factory, doc):
    path = tmp_path_factory.mktemp("s") / "stack.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        load_stack(path)
    except InvalidInput as exc:
        assert str(exc).startswith(str(path)), str(exc)


def test_cli_exit_codes_on_a_sample_of_mutations(tmp_path):
    bad = copy.deepcopy(BASES[0])
    bad["engines"][0]["replicas"] = "many"
    for i, doc in enumerate([BASES[0], bad, {"name": 3}, [1, 2]]):
        path = tmp_path / f"{i}.yaml"
        path.write_text(yaml.safe_dump(doc))
        result = subprocess.run(
            [sys.executable, "-m", "podium", "validate", str(path)], capture_output=True, text=True
        )
        assert result.returncode in (0, 2), result.stderr
        assert "Traceback" not in result.stderr


TEXTS = [Path(f"stacks/{n}/stack.yaml").read_bytes() for n in ("lab", "single-gpu", "hybrid")]
# Pieces of hostile YAML: anchors and aliases, tags, brackets, keys that are collections,
# control characters, Unicode separators and bytes that are not UTF-8.
HOSTILE_BYTES = st.sampled_from(
    [b"&a ", b"*a", b"&a [*a, *a]", b"!!python/object:os.system ", b"!!binary ", b"[" * 80, b"{a: " * 70,
     b"? [x]\n: 1\n", b"\x00", b"\x1b[2J", b"\xff\xfe", b"\xe2\x80\xa8", b"\t", b"<<: *a\n", b"2026-02-30",
     b"9" * 5000, b"\n" + b" " * 70 + b"x: 1\n", b"%YAML 1.1\n---\n", b"--- \n...\n", b"'", b'"', b"|"]
)


@st.composite
def hostile_text(draw):
    data = bytearray(draw(st.sampled_from(TEXTS)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        piece = draw(st.one_of(HOSTILE_BYTES, st.binary(min_size=1, max_size=8)))
        cut = draw(st.integers(0, 8))
        data[at : at + cut] = piece
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(hostile_text())
def test_hostile_bytes_in_stack_files_fail_cleanly_or_load(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("h") / "stack.yaml"
    path.write_bytes(data)
    try:
        load_stack(path)
    except InvalidInput as exc:
        first = str(exc).splitlines()[0]
        assert first.startswith(str(path)), first
