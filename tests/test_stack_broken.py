"""Every broken stack under tests/broken/ fails with exit 2 and one message naming the file, the
line, the field path and the value — the first line of each file says which."""

import subprocess
import sys
from pathlib import Path

import pytest

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
