"""Several gateway worker processes on one set of listening sockets, and what they share.

The parent binds the listeners (or takes the API's from systemd) and forks the workers; each
worker accepts from the same sockets, so the kernel hands each new connection to whichever
worker takes it first and a restart of the service still queues clients on the held socket.
Keys, limits and metering already live in the store, so they hold across workers as they do
across gateways. What a worker keeps in memory and the control listener must see whole
(drains, requests each replica holds) is on a `WorkerBoard`; Prometheus' metrics are summed
over the workers' files (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType

from podium.services.gateway.console_sessions import SharedSessionBook

log = logging.getLogger("podium.gateway")
# A worker that dies sooner than this after its start is restarted only after this long,
# so one that cannot start does not spin.
RESTART_PAUSE_S = 1.0


class WorkerBoard:
    """Numbers every worker reads and each writes its own part of, in memory shared by all.

    Made before the workers fork (an anonymous shared mapping), one slot per (model, replica):
    the drain's end (monotonic clock, the same in every process) and, per worker, the
    requests that worker has in flight on the replica.

    Example: board = WorkerBoard([("tiny", "http://10.0.0.5:8080")], workers=2); board.me = 1
    """

    def __init__(self, replicas: Iterable[tuple[str, str]], workers: int,
                 sessions: SharedSessionBook | None = None) -> None:
        self.slots = {r: i for i, r in enumerate(sorted(set(replicas)))}
        self.workers = workers
        self.me = 0
        # The console's logins, where it is served (a login must hold in every worker).
        self.sessions = sessions
        n = len(self.slots)
        # Per (model, replica): the drain; per worker and (model, replica): its requests;
        # per worker: the client connections it holds open.
        self._map = mmap.mmap(-1, 8 * (n * (1 + workers) + workers))
        self._cells = memoryview(self._map).cast("d")

    def drained_until(self, model: str, url: str) -> float:
        return float(self._cells[self.slots[(model, url)]])

    def drain(self, model: str, url: str, until: float) -> None:
        self._cells[self.slots[(model, url)]] = until

    def publish(self, model: str, url: str, outstanding: int) -> None:
        """This worker's requests in flight on a replica (each worker writes its own cell only)."""
        n = len(self.slots)
        self._cells[n * (1 + self.me) + self.slots[(model, url)]] = outstanding

    def outstanding(self, model: str, url: str) -> int:
        """Requests in flight on a replica, all workers together."""
        n, slot = len(self.slots), self.slots[(model, url)]
        return int(sum(self._cells[n * (1 + w) + slot] for w in range(self.workers)))

    def hold_connections(self, count: int) -> None:
        """The client connections this worker holds open now (its own cell only)."""
        self._cells[len(self.slots) * (1 + self.workers) + self.me] = count

    def connections(self) -> int:
        """Client connections open now, all workers together."""
        start = len(self.slots) * (1 + self.workers)
        return int(sum(self._cells[start:start + self.workers]))


def fresh_metrics_dir(path: Path) -> Path:
    """The folder the workers' metrics files go in, emptied: counts of a gateway that ran
    before must not be added to this one's."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700, parents=True)
    return path


class Supervisor:
    """Forks `workers` processes running `serve(index)`, restarts one that dies, and on SIGTERM
    or SIGINT passes SIGTERM on and waits for them all (each finishes its requests first).

    `serve` must be called in a process with no threads yet, and must not return until its
    worker is done. `died(pid)` is told of every worker that ended.
    """

    def __init__(self, workers: int, serve: Callable[[int], None],
                 died: Callable[[int], None], sockets: Iterable[socket.socket] = ()) -> None:
        self.workers = workers
        self.serve = serve
        self.died = died
        # The listeners the workers share: closed here once stopping, so that, as with one
        # process, a stopping gateway takes no new connection (a socket systemd holds stays
        # open in systemd, queueing clients for the next gateway).
        self.sockets = list(sockets)
        self.pids: dict[int, tuple[int, float]] = {}  # pid -> (index, started, monotonic)
        self.stopping = False

    def run(self) -> int:
        """Until every worker has ended after a stop; the exit status for the service."""
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for index in range(self.workers):
            self._fork(index)
        failed = False
        while self.pids:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            found = self.pids.pop(pid, None)
            if found is None:
                continue
            self.died(pid)
            index, started = found
            code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                failed |= code not in (0, -signal.SIGTERM)
                continue
            log.error("gateway worker %d (pid %d) ended with status %d; starting it again",
                      index, pid, code)
            if time.monotonic() - started < RESTART_PAUSE_S:
                time.sleep(RESTART_PAUSE_S)
            if not self.stopping:
                log.warning("gateway worker %d started again as pid %d", index, self._fork(index))
        return 1 if failed else 0

    def _fork(self, index: int) -> int:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                self.serve(index)
            except BaseException:
                log.exception("gateway worker %d failed", index)
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        self.pids[pid] = (index, time.monotonic())
        return pid

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        for sock in self.sockets:
            sock.close()
        for pid in list(self.pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
