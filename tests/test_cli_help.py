"""Every command and sub-command answers --help (exit 0) without touching a host."""

import subprocess
import sys

import pytest

COMMANDS = [
    [], ["validate"], ["plan"], ["render"], ["up"], ["verify"], ["status"], ["usage"],
    ["lab"], ["lab", "up"], ["lab", "down"], ["lab", "ssh"], ["lab", "image"], ["lab", "box"], ["lab", "trust"],
    ["model"], ["model", "push"], ["model", "pull"], ["model", "ls"], ["model", "show"], ["model", "tag"],
    ["model", "rm"], ["model", "make-tiny"],
    ["keys"], ["keys", "create"], ["keys", "ls"], ["keys", "revoke"],
    ["gateway"], ["gateway", "serve"],
    ["finetune"], ["jobs"], ["jobs", "ls"], ["jobs", "logs"], ["jobs", "cancel"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "podium")
def test_help(command):
    result = subprocess.run([sys.executable, "-m", "podium", *command, "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
