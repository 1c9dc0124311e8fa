"""Running the host tools Podium drives (ip, nft, ssh-keygen, qemu-img, virsh, ...).

One place turns a failed command into one sentence naming the command, its exit status and
what it printed on stderr, so every caller reports failures the same way.
"""

from __future__ import annotations

import subprocess

from podium.errors import PodiumError


def run_tool(
    command: list[str], *, check: bool = True, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `command` with text output captured; raise PodiumError on failure when `check`.

    Example: run_tool(["ip", "link", "show", "pdm-lab"], check=False).returncode
    """
    result = subprocess.run(command, capture_output=True, text=True, input=input_text)
    if check and result.returncode != 0:
        raise PodiumError(
            f"`{' '.join(command)}` failed (exit {result.returncode}): {result.stderr.strip()}"
        )
    return result


def tool_output(command: list[str], input_text: str | None = None) -> str:
    """The stdout of a command that must succeed.

    Example: tool_output(["qemu-img", "info", "--output=json", "disk.qcow2"])
    """
    return run_tool(command, input_text=input_text).stdout
