"""A fine-tuning job on a trainer node: a transient systemd unit running the trainer's script,
its progress file read back as it grows, and the jobs a node holds listed, shown and stopped."""

from __future__ import annotations

import json
import re
import secrets
import shlex
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from podium.errors import InvalidInput, PodiumError
from podium.finetune.node import NodeShell
from podium.stack import Stack
from podium.stack.model import TRAINER_LABEL

JOBS_DIR = "/var/lib/podium/jobs"
TRAINER_HOME = "/opt/podium/trainer"
UNIT_PREFIX = "podium-finetune-"
JOB_ID = re.compile(r"^[a-z][a-z0-9-]{0,40}-[0-9]{8}T[0-9]{6}-[0-9a-f]{6}$")
POLL_S = 1.0


@dataclass(frozen=True)
class Hyperparameters:
    epochs: int = 3
    lr: float = 1e-3
    rank: int = 8
    seed: int = 0

    def check(self) -> Hyperparameters:
        if not 1 <= self.epochs <= 1000:
            raise InvalidInput(f"--epochs {self.epochs} is out of range; give 1 to 1000.")
        if not 0 < self.lr < 1:
            raise InvalidInput(f"--lr {self.lr} is out of range; give a rate above 0 and below 1 (e.g. 1e-3).")
        if not 1 <= self.rank <= 256:
            raise InvalidInput(f"--rank {self.rank} is out of range; give 1 to 256 (e.g. 8).")
        return self

    def args(self) -> list[str]:
        return ["--epochs", str(self.epochs), "--lr", repr(self.lr), "--rank", str(self.rank),
                "--seed", str(self.seed)]

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "lr": self.lr, "rank": self.rank, "seed": self.seed}


def trainer_node(stack: Stack, node: str | None) -> str:
    """The node to train on: `node` when the stack labels it for training, else the first one that is."""
    labelled = stack.trainer_nodes
    if not labelled:
        raise InvalidInput(f"stack {stack.name!r} labels no node for training; add "
                           f'labels: {{{TRAINER_LABEL}: "true"}} to a node and run podium up.')
    if node is None:
        return labelled[0]
    if node not in labelled:
        raise InvalidInput(f"--node {node!r} is not labelled for training in {stack.name!r}; "
                           f"use one of: {', '.join(labelled)}.")
    return node


def new_job_id(name: str) -> str:
    return f"{name}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


def check_job_id(job: str) -> str:
    if not JOB_ID.match(job):
        raise InvalidInput(f"job {job!r} is not a job id like support-20260101T120000-a1b2c3; "
                           "see podium jobs ls STACK.")
    return job


def start(shell: NodeShell, job: str, data_file: str, hyper: Hyperparameters) -> None:
    """Start the job's unit: the trainer's script on the job's base folder and dataset, its JSON
    lines appended to progress.jsonl, its errors to the journal."""
    home = f"{JOBS_DIR}/{job}"
    command = [f"{TRAINER_HOME}/venv/bin/python", f"{TRAINER_HOME}/train.py",
               "--base", f"{home}/base", "--data", f"{home}/{data_file}", "--out", f"{home}/adapter",
               *hyper.args()]
    shell.run(" ".join([
        "systemd-run", f"--unit={UNIT_PREFIX}{job}", "--description=" + shlex.quote(f"Podium fine-tune {job}"),
        f"--working-directory={home}", "--property=StandardOutput=" + shlex.quote(f"append:{home}/progress.jsonl"),
        "--property=StandardError=journal", "--setenv=HF_HUB_OFFLINE=1", "--setenv=TRANSFORMERS_OFFLINE=1",
        *map(shlex.quote, command)]))


def follow(shell: NodeShell, job: str, show: Callable[[dict[str, Any]], None],
           timeout_s: float) -> dict[str, Any]:
    """Show each progress line as it comes until the job ends; returns its `done` line, or
    PodiumError with the unit's last journal lines when it failed, stopped or ran out of time."""
    seen = 0
    deadline = time.monotonic() + timeout_s
    while True:
        # The state is read before the file: a job that ended has written its last line by then.
        out = shell.run(f"s=$(systemctl is-active {UNIT_PREFIX}{job}); "
                        f"cat {JOBS_DIR}/{job}/progress.jsonl 2>/dev/null; printf '\\n#state %s\\n' \"$s\"",
                        check=False)
        content, _, state = out.rstrip("\n").rpartition("\n#state ")
        # The last piece is a line still being written (or empty): it is read whole next time.
        complete = content.split("\n")[:-1]
        for event in events(complete[seen:]):
            show(event)
            if event.get("event") == "done":
                return event
        seen = len(complete)
        if state not in ("active", "activating"):
            raise PodiumError(f"fine-tune {job} on {shell.node} ended without an adapter; "
                              f"its log: {logs(shell, job, 5).strip() or '(empty)'}")
        if time.monotonic() > deadline:
            raise PodiumError(f"fine-tune {job} on {shell.node} still runs after {timeout_s:.0f} s; "
                              f"follow it with podium jobs logs, or stop it with podium jobs cancel.")
        time.sleep(POLL_S)


def events(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The JSON objects among progress lines; anything else a trainer printed is passed over."""
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            yield event


def list_jobs(shell: NodeShell) -> list[dict[str, Any]]:
    """Every job the node holds: id, state (running, done, failed, stopped) and its last loss."""
    out = shell.run(
        f"for d in {JOBS_DIR}/*/; do [ -d \"$d\" ] || continue; j=$(basename \"$d\"); "
        f"echo \"#job $j $(systemctl is-active {UNIT_PREFIX}$j) "
        "$(test -f $d/adapter/adapter_config.json && echo adapter)\"; "
        "grep '\"event\": \"step\"' \"$d/progress.jsonl\" 2>/dev/null | tail -n 1; echo; done",
        check=False)
    jobs: list[dict[str, Any]] = []
    for line in out.splitlines():
        if line.startswith("#job "):
            parts = line.split()
            state = "running" if parts[2] in ("active", "activating") else (
                "done" if len(parts) > 3 else ("failed" if parts[2] == "failed" else "stopped"))
            jobs.append({"job": parts[1], "node": shell.node, "state": state, "loss": None})
        elif jobs and line.strip():
            with_loss = next(events([line]), {})
            jobs[-1]["loss"] = with_loss.get("loss", jobs[-1]["loss"])
    return jobs


def logs(shell: NodeShell, job: str, lines: int = 200) -> str:
    """The job's progress lines and its unit's journal (where the trainer's errors go)."""
    check_job_id(job)
    return shell.run(f"tail -n {lines} {JOBS_DIR}/{job}/progress.jsonl 2>/dev/null; "
                     f"journalctl -q -o cat --no-pager -n {lines} -u {UNIT_PREFIX}{job}", check=False)


def cancel(shell: NodeShell, job: str) -> bool:
    """Stop the job's unit; False when it was not running."""
    check_job_id(job)
    active = shell.run(f"systemctl is-active {UNIT_PREFIX}{job}", check=False).strip()
    if active not in ("active", "activating"):
        return False
    shell.run(f"systemctl stop {UNIT_PREFIX}{job}")
    return True
