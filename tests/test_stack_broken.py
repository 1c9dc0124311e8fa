"""Every broken stack under tests/broken/ fails with exit 2 and one message naming the file, the
line, the field path and the value — the first line of each file says which."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from podium.errors import InvalidInput
from podium.stack import load_stack

BROKEN = sorted(Path(__file__).parent.joinpath("broken").glob("*.yaml"))


def expected(path: Path) -> tuple[int, str]:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: LINE: MESSAGE'"
    line, _, message = first.removeprefix("# expect: ").partition(": ")
    return int(line), message


def test_there_are_enough_broken_stacks():
    assert len(BROKEN) >= 25


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_broken_stack_names_line_path_and_value(path):
    line, message = expected(path)
    with pytest.raises(InvalidInput) as caught:
        load_stack(path)
    first = str(caught.value).splitlines()[0]
    assert first.startswith(f"{path}:{line}: "), first
    assert message in first, first


@pytest.mark.parametrize("path", BROKEN[:5], ids=[p.stem for p in BROKEN[:5]])
def test_cli_exits_2_without_traceback(path):
    result = subprocess.run(
        [sys.executable, "-m", "podium", "validate", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {path}:"), result.stderr


@pytest.mark.parametrize("spelling", ["trust-remote-code", "trust_remote_code", "--trust-remote-code"])
@pytest.mark.parametrize("engine", [0, 1], ids=["vllm", "sglang"])
def test_trust_remote_code_needs_a_trusted_model(tmp_path: Path, spelling: str, engine: int) -> None:
    """Remote code is Python that comes with the model: like a pickle, it needs `trusted: true`."""
    data = yaml.safe_load(Path("stacks/single-gpu/stack.yaml").read_text())
    data["engines"][engine]["args"][spelling] = True
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(InvalidInput) as caught:
        load_stack(path)
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    name, kind = data["engines"][engine]["name"], data["engines"][engine]["kind"]
    model = data["engines"][engine]["model"].split(":")[0]
    assert f"engines[{engine}].args.{spelling.lstrip('-')}" in message, message
    assert f"{kind} engine {name}" in message and "set trusted: true on that model" in message, message
    assert f"model {model}" in message, message
    # A trusted model may, and `false` asks for nothing.
    for model_entry in data["models"]:
        model_entry["trusted"] = True
    path.write_text(yaml.safe_dump(data))
    load_stack(path)
    for model_entry in data["models"]:
        model_entry["trusted"] = False
    data["engines"][engine]["args"][spelling] = False
    path.write_text(yaml.safe_dump(data))
    load_stack(path)
