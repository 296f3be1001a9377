"""The engine in a process of its own, for the Dagster table step.

In the step's process, Dagster's Python (storing each table's events: about 2 s a run) and the
engine's (psycopg returns to it once per statement, some 2,450 in a first load) take turns at
one GIL; in a process of its own the engine goes on with the next table while the step records
the last one. Measured with benchmarks/engine_process.py (the table step's shape, no checks):
70k rows 5.68 -> 4.36 s, 500k 7.55 -> 6.20 s, 2M 15.54 -> 15.27 s (benchmarks/profile.md).
The child runs ``sync_tables`` unchanged and sends back what it yields; the checks stay in the
step, started by each outcome.

- The step takes the target lock (target_lock) on a session of its own before it copies D1.
  The child passes through it (``held_elsewhere``) and dies with the step that holds it
  (PR_SET_PDEATHSIG): a step killed with SIGKILL leaves no engine writing beside the next sync.
- Nothing open crosses: the child is a new interpreter (``python -m d1_migration.sync.apart``)
  that opens its own connection and its own snapshot of the run's D1 file. The step's
  snapshot of that file, open all along, keeps it as it is (its read transaction; a file in
  WAL mode is the run's copy).
- What crosses, pickled over a socket: the job to the child; then the drift verdict, each
  table's outcome and the engine's log records, and last the end or the error, raised again
  in the step as itself (TargetLost, SchemaDrift, EvolutionRefused...).
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import resource
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection, Pipe
from pathlib import Path

from d1_migration.source.snapshot import SqliteSource
from d1_migration.spec.model import Schema
from d1_migration.sync.engine import Outcome, sync_tables
from d1_migration.sync.shadow import shadow_file_in
from d1_migration.sync.target_lock import held_elsewhere
from d1_migration.target.connection import connect_target
from d1_migration.verify.drift import Drift

PR_SET_PDEATHSIG = 1  # linux/prctl.h
WAIT_SECONDS = 1.0  # how often the step looks whether a silent child is still alive
EXIT_SECONDS = 10.0  # for a child that has finished to exit, before it is killed
WATCH_SECONDS = 0.05  # how often the child looks whether the step is alive (not on Linux)


@dataclass(frozen=True)
class Job:
    """What the child syncs: sync_tables's arguments, as data."""

    target_url: str
    source_path: str
    schema: Schema
    state_dir: str | None  # None: no shadow
    incremental: bool
    run_id: str | None
    selected: frozenset[str] | None
    skip_tables: tuple[str, ...]
    log_level: int


class EngineDied(RuntimeError):
    """The engine's process ended without saying why (killed, out of memory); the tables
    whose outcomes arrived are committed, the one it was loading is unchanged."""


@contextmanager
def sync_tables_apart(
    target_url: str,
    source_path: Path,
    schema: Schema,
    state_dir: Path | None,
    *,
    incremental: bool,
    run_id: str | None = None,
    selected: Collection[str] | None = None,
    skip_tables: tuple[str, ...] = (),
    on_drift_checked: Callable[[Drift], None] | None = None,
) -> Iterator[Iterator[Outcome]]:
    """``sync_tables`` (the same outcomes, the same errors) in a child process started on
    entering, so that it starts up while the caller gets ready; the caller holds the target
    lock, which the child passes through. Leaving kills the child if it is still running:
    the table it was loading stays as it was (one transaction)."""
    job = Job(
        target_url=target_url,
        source_path=str(source_path),
        schema=schema,
        state_dir=None if state_dir is None else str(state_dir),
        incremental=incremental,
        run_id=run_id,
        selected=None if selected is None else frozenset(selected),
        skip_tables=tuple(skip_tables),
        log_level=logging.getLogger("d1_migration").getEffectiveLevel(),
    )
    ours, theirs = Pipe()
    child = subprocess.Popen(
        [sys.executable, "-m", __name__, str(theirs.fileno()), str(os.getpid())],
        pass_fds=[theirs.fileno()],
        stdin=subprocess.DEVNULL,
    )
    theirs.close()
    ended: list[bool] = []  # the child said "done" or sent its error: it is exiting
    try:
        ours.send(job)
        yield _outcomes(ours, child, schema, on_drift_checked, ended)
    finally:
        try:
            child.wait(timeout=EXIT_SECONDS if ended else 0)
        except subprocess.TimeoutExpired:  # still syncing: the caller is about to let go of
            child.kill()  # the target lock, and nothing may write without it
            child.wait()
        ours.close()


def _outcomes(
    conn: Connection,
    child: subprocess.Popen,
    schema: Schema,
    on_drift_checked: Callable[[Drift], None] | None,
    ended: list[bool],
) -> Iterator[Outcome]:
    tables = {t.name: t for t in schema.tables}
    while True:
        kind, *payload = _receive(conn, child)
        if kind in ("error", "done"):
            ended.append(True)
        if kind == "log":
            record = payload[0]
            logging.getLogger(record.name).handle(record)
        elif kind == "drift":
            if on_drift_checked is not None:
                on_drift_checked(payload[0])
        elif kind == "outcome":
            name, status, result, error = payload
            yield Outcome(tables[name], status, result, error)
        elif kind == "error":
            raise payload[0]
        else:  # "done"
            return


def peak_rss_mib() -> float:
    """This process's peak resident memory and its engine processes' (children it waited
    for), added up: the two run side by side, so the sum bounds what a run held at once."""
    runs = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    return sum(resource.getrusage(who).ru_maxrss for who in runs) / 1024


def _receive(conn: Connection, child: subprocess.Popen) -> tuple:
    while not conn.poll(WAIT_SECONDS):
        if child.poll() is not None:
            break
    try:
        return conn.recv()
    except EOFError:
        code = child.wait()
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        raise EngineDied(f"the sync engine's process ended ({how}) before the sync did") from None


class _Channel:
    """The child's end of the socket, one message at a time whichever thread sends: the
    engine's threads (read-ahead, shadow) may log while its main thread sends an outcome."""

    def __init__(self, conn: Connection) -> None:
        self.conn, self.lock = conn, threading.Lock()

    def send(self, *message: object) -> None:
        with self.lock:
            self.conn.send(message)


class _Forward(logging.Handler):
    """The child's log records, to the step's loggers of the same name."""

    def __init__(self, channel: _Channel) -> None:
        super().__init__()
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        record.msg, record.args = self.format(record), None  # its args may not pickle
        record.exc_info = record.exc_text = record.stack_info = None  # in msg now
        self.channel.send("log", record)


def _sendable(error: BaseException) -> BaseException:
    """``error`` with its traceback here as a note, if it survives pickling as itself; else a
    RuntimeError that tells it."""
    text = "".join(traceback.format_exception(error)).strip()
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"the sync engine failed: {text}")
    error.add_note(f"in the sync engine's process:\n{text}")
    return error


def _die_with_parent(parent: int) -> None:
    """End this process the moment ``parent`` (which holds the target lock) ends: the kernel
    kills it (Linux); elsewhere a thread that looks every WATCH_SECONDS."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    else:

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(WATCH_SECONDS)
            os._exit(1)

        threading.Thread(target=watch, name="d1m-parent-watch", daemon=True).start()
    if os.getppid() != parent:  # the step died before the lines above: nobody holds the lock
        os._exit(1)


def _serve(conn: Connection) -> None:
    job: Job = conn.recv()
    channel = _Channel(conn)
    logger = logging.getLogger("d1_migration")
    logger.setLevel(job.log_level)
    logger.addHandler(_Forward(channel))
    logger.propagate = False
    try:
        with (
            connect_target(job.target_url) as target,
            SqliteSource(job.source_path).snapshot() as snapshot,
            held_elsewhere(target),
        ):
            for outcome in sync_tables(
                target,
                snapshot,
                job.schema,
                None if job.state_dir is None else shadow_file_in(Path(job.state_dir)),
                incremental=job.incremental,
                run_id=job.run_id,
                selected=job.selected,
                skip_tables=job.skip_tables,
                on_drift_checked=lambda drift: channel.send("drift", drift),
            ):
                channel.send(
                    "outcome", outcome.table.name, outcome.status, outcome.result, outcome.error
                )
    except BaseException as error:  # raised again in the step
        channel.send("error", _sendable(error))
    else:
        channel.send("done")


if __name__ == "__main__":
    _die_with_parent(int(sys.argv[2]))
    _serve(Connection(int(sys.argv[1])))
