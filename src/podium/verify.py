"""`podium verify`: every deployed component's roles/<role>/verify.py (testinfra) against its
hosts, in one pytest run, reported as component × host × pass/fail."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from podium.plan.actions import Action
from podium.render import REPO
from podium.secrets import StackSecrets
from podium.stack.model import Stack


@dataclass
class Outcome:
    component: str
    host: str
    passed: bool = True
    tests: int = 0
    failures: list[str] = field(default_factory=list)
    # The checks that ran (passed or failed), so a skipped one is seen to be missing.
    checks: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Target:
    component: str
    host: str
    settings: dict[str, Any]

    def __str__(self) -> str:
        return self.host


def ssh_config(stack: Stack, secrets: StackSecrets) -> Path:
    """An ssh_config of the stack's own: its key, its known_hosts, strict checking, no ~/.ssh."""
    path = secrets.path("ssh_config")
    lines = []
    for node in stack.nodes:
        key = Path(node.ssh.key).expanduser() if node.ssh.key else secrets.ssh_key
        lines += [
            f"Host {node.name} {node.address}",
            f"  HostName {node.address}",
            f"  User {node.ssh.user}",
            f"  Port {node.ssh.port}",
            f"  IdentityFile {key}",
            "  IdentitiesOnly yes",
            f"  UserKnownHostsFile {secrets.known_hosts}",
            "  StrictHostKeyChecking yes",
            "  BatchMode yes",
            "  ConnectTimeout 10",
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class VerifyPlugin:
    """Parametrizes each role's verify tests over the hosts of that component."""

    def __init__(self, stack: Stack, targets: Sequence[Target]) -> None:
        self._stack = stack
        self.targets = list(targets)
        self.secrets = StackSecrets(stack.name)
        self.config = ssh_config(stack, self.secrets)
        self.outcomes: dict[tuple[str, str], Outcome] = {}
        for t in self.targets:
            self.outcomes[(t.component, t.host)] = Outcome(t.component, t.host)
        self._hosts: dict[str, Any] = {}

    def testinfra_host(self, name: str) -> Any:
        import testinfra

        if name not in self._hosts:
            node = self._stack.node(name)
            self._hosts[name] = testinfra.get_host(
                f"ssh://{node.name}", ssh_config=str(self.config), sudo=node.ssh.user != "root"
            )
        return self._hosts[name]

    @staticmethod
    def _component(path: Path) -> str | None:
        parts = path.resolve().parts
        if len(parts) >= 3 and parts[-3] == "roles" and parts[-1] == "verify.py":
            return parts[-2].replace("_", "-")
        return None

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        component = self._component(Path(str(metafunc.definition.fspath)))
        if component is None or "target" not in metafunc.fixturenames:
            return
        targets = [t for t in self.targets if t.component == component]
        metafunc.parametrize("target", targets, ids=[t.host for t in targets], scope="module")

    @pytest.fixture(scope="module")
    def host(self, target: Target) -> Any:
        return self.testinfra_host(target.host)

    @pytest.fixture(scope="module")
    def settings(self, target: Target) -> dict[str, Any]:
        return target.settings

    @pytest.fixture(scope="session")
    def node(self) -> Any:
        """node("node2") → a testinfra host for another node of the stack."""
        return self.testinfra_host

    @pytest.fixture(scope="session")
    def stack(self) -> Stack:
        return self._stack

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call" and not report.failed:
            return
        callspec = report.nodeid
        component = self._component(Path(report.fspath))
        if component is None:
            return
        host = callspec.rsplit("[", 1)[-1].rstrip("]") if "[" in callspec else ""
        outcome = self.outcomes.get((component, host))
        if outcome is None:
            return
        name = report.nodeid.split("::")[-1].split("[")[0]
        if report.when == "call":
            outcome.tests += 1
            outcome.checks.append(name)
        if report.failed:
            outcome.passed = False
            message = _short(report)
            outcome.failures.append(f"{name}: {message}")


def _short(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    return " ".join(text.split())[:400]


def targets_for(actions: Sequence[Action]) -> list[Target]:
    """Every (component, host) that is deployed after the plan, and has a verify.py."""
    out = []
    for action in actions:
        if action.action == "remove":
            continue
        verify = REPO / "roles" / action.component.replace("-", "_") / "verify.py"
        if verify.is_file():
            out.append(Target(action.component, action.host, dict(action.settings)))
    return out


def run_verify(stack: Stack, actions: Sequence[Action], quiet: bool = True) -> list[Outcome]:
    targets = targets_for(actions)
    plugin = VerifyPlugin(stack, targets)
    files = sorted({str(REPO / "roles" / t.component.replace("-", "_") / "verify.py") for t in targets})
    args = [
        *files,
        "-p",
        "no:cacheprovider",
        "-p",
        "no:pytest11.testinfra",
        "-o",
        "python_files=verify.py",
        "--rootdir",
        str(REPO),
    ]
    args += ["-q", "--no-header", "-p", "no:randomly"] if quiet else ["-v"]
    code: int | pytest.ExitCode = 0
    if files:
        # pytest reports on stdout; keep stdout for the command's own result (--json).
        with contextlib.redirect_stdout(sys.stderr):
            code = pytest.main(args, plugins=[plugin])
    outcomes = list(plugin.outcomes.values())
    for outcome in outcomes:
        # A host whose checks never ran has proved nothing.
        if outcome.tests == 0:
            outcome.passed = False
            outcome.failures.append(f"no checks ran (pytest exit code {int(code)})")
    return outcomes


def outcomes_json(outcomes: Sequence[Outcome]) -> str:
    return json.dumps([o.to_dict() for o in outcomes], indent=2)
