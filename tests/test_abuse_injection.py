"""Stack values cannot inject: every string field of the schema (found by walking the pydantic
models, not listed by hand) takes hostile text. Either validation refuses it, one printable line
per problem, or every file `podium render` writes holds it as one inert token: each file, parsed
as what it is (YAML/JSON loaded back, units split by systemd's quoting, the rest by shell
quoting), equals the file rendered from the harmless value once the hostile one is swapped back."""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from podium.cluster import render_manifests
from podium.errors import InvalidInput
from podium.files import files_for
from podium.plan import make_plan
from podium.stack import load_stack
from podium.stack.model import Stack
from podium.stack.versions import load_versions

RICH = Path(__file__).parent / "data" / "injection" / "stack.yaml"
BASE: dict[str, Any] = yaml.safe_load(RICH.read_text())
# A field that takes one of two shapes holds the first in the file; fields of the other shape are
# tried on a copy of the stack that holds it (artifact_mirror: a URL, or a bundle a node serves).
OTHER_FORMS: dict[str, Any] = {"artifact_mirror": {"bundle": "/srv/podium-bundle", "node": "vm-ctrl"}}
VERSIONS = load_versions()
# Where a slot's path steps into the first item of a list, or the first key or value of a mapping.
ITEM, KEY, VALUE = "<item>", "<key>", "<value>"
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
HOSTILE = [";", "$(id)", "`id`", "\n", "${IFS}", "'", '"', "\x00", "\u2028", "\u2029", "\\", "|", "&",
           ">", "<", "*", " ", "#", "%n", "$HOME", "{{ x }}", "--", "\r", "\t", "\x1b[2J", "\u202e", "=",
           ",", ":", "[", "]", "{", "}", "/", ".."]


def string_slots(annotation: Any, path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Paths of every place in the schema that holds a string."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return string_slots(args[0], path)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(string_slots(a, path) for a in args))
    if origin is typing.Literal:
        return set()  # a closed set of words: anything else is refused by the schema
    if origin is list:
        return string_slots(args[0], (*path, ITEM))
    if origin is dict:
        keys = {(*path, KEY)} if string_slots(args[0]) else set()
        return keys | string_slots(args[1], (*path, VALUE))
    if annotation is str:
        return {path}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        out: set[tuple[str, ...]] = set()
        for name, field in annotation.model_fields.items():
            out |= string_slots(field.annotation, (*path, name))
        return out
    return set()


SLOTS = sorted(string_slots(Stack))


def _parent(doc: Any, slot: tuple[str, ...]) -> Any:
    node = doc
    for part in slot[:-1]:
        if part == ITEM:
            node = node[0]
        elif part == VALUE:
            node = node[next(iter(node))]
        else:
            node = node[part]
    return node


def value_at(doc: Any, slot: tuple[str, ...]) -> str:
    node, last = _parent(doc, slot), slot[-1]
    if last == ITEM:
        return str(node[0])
    if last == KEY:
        return str(next(iter(node)))
    if last == VALUE:
        return str(node[next(iter(node))])
    return str(node[last])


def base_doc(slot: tuple[str, ...]) -> dict[str, Any]:
    """The stack a slot is tried in: BASE, or BASE with the field's other shape."""
    top = slot[0]
    if top in OTHER_FORMS and not isinstance(BASE[top], dict) and len(slot) > 1:
        return {**BASE, top: copy.deepcopy(OTHER_FORMS[top])}
    if slot[:2] == ("models", ITEM) and slot[2:] in (("base",), ("adapter",)):
        # An adapter model's own fields are tried on a copy whose first model is the adapter.
        models = BASE["models"]
        return {**BASE, "models": [m for m in models if "adapter" in m] + [m for m in models if "adapter" not in m]}
    return BASE


def with_value(slot: tuple[str, ...], value: str) -> dict[str, Any]:
    doc = copy.deepcopy(base_doc(slot))
    node, last = _parent(doc, slot), slot[-1]
    if last == ITEM:
        node[0] = value
    elif last == KEY:
        items = list(node.items())
        node.clear()
        node[value] = items[0][1]
        node.update(items[1:])
    elif last == VALUE:
        node[next(iter(node))] = value
    else:
        node[last] = value
    return doc


def rendered(stack: Stack) -> dict[str, str]:
    """Every file `podium render` writes, by the path it writes it to."""
    out = {}
    for action in make_plan(stack, VERSIONS):
        for relative, content in files_for(action.component, action.host, action.settings).items():
            out[f"{action.host}/{action.component}/{relative}"] = content
    if stack.kubernetes:
        for name, text in render_manifests(stack, VERSIONS).items():
            out[f"cluster/{name}"] = text
    return out


def systemd_words(value: str) -> list[tuple[str, bool]]:
    """A unit setting's value split as systemd does (quotes, C escapes, %% and $$), each word with
    whether systemd would expand something in it (a lone % specifier or $ variable)."""
    words: list[tuple[str, bool]] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] in " \t":
            i += 1
        if i >= n:
            break
        word: list[str] = []
        expands, quote = False, ""
        while i < n:
            c = value[i]
            if quote and c == quote:
                quote, i = "", i + 1
                continue
            if not quote and c in " \t":
                break
            if not quote and c in "\"'":
                quote, i = c, i + 1
                continue
            if c == "\\" and i + 1 < n:
                word.append({"n": "\n", "t": "\t"}.get(value[i + 1], value[i + 1]))
                i += 2
                continue
            if c in "%$":
                if i + 1 < n and value[i + 1] == c:
                    word.append(c)
                    i += 2
                    continue
                expands = True
            word.append(c)
            i += 1
        assert not quote, f"unterminated quote in {value!r}"
        words.append(("".join(word), expands))
    return words


def parsed(name: str, text: str) -> Any:
    """The file as its reader sees it."""
    if name.endswith(".json"):
        return json.loads(text)
    if name.endswith((".yaml", ".yml")):
        return list(yaml.safe_load_all(text))
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith(("#", ";"))]
    if re.search(r"^\[(Unit|Service|Install|Timer|Match|Network|NetDev|Link|Bridge|VLAN)\]$", text, re.M):
        return [
            line if line.startswith("[") else (line.partition("=")[0], systemd_words(line.partition("=")[2]))
            for line in lines
        ]
    out: list[Any] = []
    for line in lines:
        try:
            out.append(shlex.split(line, comments=True))
        except ValueError:
            out.append(("not shell-quoted", line))
    return out


def swapped(data: Any, hostile: str, harmless: str) -> Any:
    if isinstance(data, str):
        return data.replace(hostile, harmless)
    if isinstance(data, dict):
        return {swapped(k, hostile, harmless): swapped(v, hostile, harmless) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return type(data)(swapped(v, hostile, harmless) for v in data)
    return data


_BASE_FILES: dict[str, dict[str, Any]] = {}


def base_files(slot: tuple[str, ...], tmp_path: Path) -> dict[str, Any]:
    """The files the slot's own stack renders with its harmless values, parsed."""
    doc = base_doc(slot)
    key = json.dumps(doc, sort_keys=True, default=str)
    if key not in _BASE_FILES:
        path = RICH
        if doc is not BASE:
            path = tmp_path / "base" / "stack.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(doc, allow_unicode=False))
        _BASE_FILES[key] = {k: parsed(k, v) for k, v in rendered(load_stack(path)).items()}
    return _BASE_FILES[key]


@st.composite
def hostile_text(draw: st.DrawFn) -> str:
    pieces = draw(st.lists(st.sampled_from(HOSTILE), min_size=1, max_size=5))
    # A marker of its own, so swapping the value back never touches the templates' own text.
    pieces.insert(draw(st.integers(0, len(pieces))), "zq9")
    return "".join(pieces)


def check_refused_or_inert(tmp_path: Path, slot: tuple[str, ...], hostile: str) -> str:
    harmless = value_at(base_doc(slot), slot)
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(with_value(slot, hostile), allow_unicode=False))
    try:
        stack = load_stack(path)
    except InvalidInput as exc:
        lines = str(exc).splitlines()
        assert lines and all(line.isprintable() for line in lines), f"{slot}: unprintable message {exc!s:.300}"
        assert all(line.startswith((str(path), "... and")) for line in lines), f"{slot}: {exc!s:.300}"
        return "refused"
    try:
        files = rendered(stack)
    except InvalidInput as exc:
        # Refused while files are built (a mirror URL without a host, say): `podium render`
        # exits 2 with this one sentence, as good as validate refusing it.
        assert len(str(exc).splitlines()) == 1 and str(exc).isprintable(), f"{slot}: {exc!s:.300}"
        return "refused"
    assert not CONTROL.search(hostile), f"{slot}: a value with a control character was accepted: {hostile!r}"
    # The value as the schema keeps it (an engine flag loses its leading dashes, say).
    hostile = value_at(stack.model_dump(mode="json"), slot)
    base = base_files(slot, tmp_path)
    assert {swapped(k, hostile, harmless) for k in files} == set(base), f"{slot}: {hostile!r} changed file names"
    for name, text in files.items():
        ours = swapped(parsed(name, text), hostile, harmless)
        assert ours == base[swapped(name, hostile, harmless)], (
            f"{slot} = {hostile!r} is not one inert token in {name}:\n{text[:1500]}"
        )
    return "inert"


def test_the_injection_stack_fills_every_string_field_of_the_schema() -> None:
    """A string field the stack under test leaves empty would escape the test below."""
    assert len(SLOTS) > 50, SLOTS
    for slot in SLOTS:
        value_at(base_doc(slot), slot)  # KeyError or IndexError: add the field to tests/data/injection


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(slot=st.sampled_from(SLOTS), hostile=hostile_text())
def test_every_string_field_refuses_hostile_text_or_renders_it_inert(
    tmp_path_factory: pytest.TempPathFactory, slot: tuple[str, ...], hostile: str
) -> None:
    check_refused_or_inert(tmp_path_factory.mktemp("inj"), slot, hostile)


@pytest.mark.parametrize("slot", SLOTS, ids=[".".join(s) for s in SLOTS])
def test_each_string_field_with_a_shell_payload(tmp_path: Path, slot: tuple[str, ...]) -> None:
    """One payload in every field, so no field is left to chance."""
    check_refused_or_inert(tmp_path, slot, "x; $(touch /tmp/pwned) `id` ${IFS}'\"zq9")
    check_refused_or_inert(tmp_path, slot, "zq9\nExecStartPre=/bin/sh -c id")


def test_engine_arg_values_reach_the_unit_as_one_word(tmp_path: Path) -> None:
    """Free text that is accepted (an engine arg's value) is quoted in the unit, $ and % escaped."""
    payload = "a b; $(id) `id` ${IFS} %n 'q' \"d\" \\ zq9"
    slot = ("engines", ITEM, "args", VALUE)
    assert check_refused_or_inert(tmp_path, slot, payload) == "inert"
    path = tmp_path / "stack.yaml"
    files = rendered(load_stack(path))
    unit = files["vm-ctrl/engine-llamacpp/etc/systemd/system/podium-llamacpp-chat-0.service"]
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    words = systemd_words(exec_start.removeprefix("ExecStart="))
    assert (payload, False) in words, words
    assert words[words.index((payload, False)) - 1] == ("--ctx-size", False)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (("nodes", 0, "ssh", "user"), "root; reboot"),
        (("storage", "mount"), "/srv/$(reboot)"),
        (("network", "ntp_servers", 0), "pool.ntp.org\nserver evil"),
        (("description",), "line one\u2028line two"),
    ],
)
def test_the_cli_refuses_hostile_values_with_exit_2_and_one_line(
    tmp_path: Path, field: tuple[Any, ...], value: str
) -> None:
    doc = copy.deepcopy(BASE)
    node: Any = doc
    for part in field[:-1]:
        node = node[part]
    node[field[-1]] = value
    (tmp_path / "stack.yaml").write_text(yaml.safe_dump(doc))
    result = subprocess.run(
        [sys.executable, "-m", "podium", "validate", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].isprintable(), lines[0]
    assert ".".join(str(p) for p in field).replace(".0", "[0]") in lines[0], lines[0]


@pytest.mark.parametrize("word", ["a\nExecStartPre=/bin/sh", "a\rb", "a\x00b", "a\u2028b"])
def test_systemd_quote_refuses_a_line_break(word: str) -> None:
    """A unit setting ends at a line break, which no quoting can carry: refused, not written."""
    from podium.engine_files import systemd_quote

    with pytest.raises(ValueError, match="line break"):
        systemd_quote(word)
