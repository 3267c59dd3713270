"""The warehouse gate: one writer or many readers, across every credit-etl process.

DuckDB lets one process open a database file for writing, and no other process may
then open it at all, not even read-only. A second process that tries fails after
DuckDB's own retries with an error that names only a PID. The gate puts credit-etl's
processes (Dagster steps, sensors, the command line) in a queue in front of the file
instead: a writer takes an exclusive lock on ``warehouse.duckdb.gate``, a reader a
shared one, and each waits its turn up to a bounded time. The writer also records who
it is in a file beside the gate, so a process that waits or times out can name
the holder.

With the gate held, DuckDB can still refuse the file when a program outside
credit-etl has it open (a DuckDB shell, a notebook). That case fails at once with the
program's PID and command line, since waiting would not end it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2

# Gate locks taken by this process, by gate path. An flock lock belongs to an open
# file, so a second acquisition in the same process would wait for itself.
_locks_in_process: dict[Path, tuple[int, bool, int]] = {}
_locks_guard = threading.Lock()


class WarehouseBusyError(RuntimeError):
    """The warehouse stayed in use by another credit-etl process for too long."""


def gate_path(warehouse: Path) -> Path:
    return warehouse.with_name(warehouse.name + ".gate")


def holder_path(warehouse: Path) -> Path:
    return warehouse.with_name(warehouse.name + ".holder")


def describe_holder(warehouse: Path) -> str:
    """Return the writer that has the gate, as that writer recorded itself."""
    try:
        record = json.loads(holder_path(warehouse).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "another credit-etl process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("since", 0)))
    return (
        f"credit-etl PID {record.get('pid')} ({record.get('purpose') or 'a run'}, "
        f"since {since})"
    )


@contextmanager
def warehouse_gate(
    warehouse: Path, write: bool, wait_seconds: float, purpose: str = ""
) -> Iterator[None]:
    """Hold the gate for writing or reading; wait at most ``wait_seconds`` for it."""
    path = gate_path(warehouse)
    with _locks_guard:
        existing = _locks_in_process.get(path)
        if existing and (existing[1] or not write):
            _locks_in_process[path] = (existing[0], existing[1], existing[2] + 1)
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            _release(path)
        return
    if existing:
        raise RuntimeError(
            f"{warehouse} is open for reading in this process; close that connection "
            "before opening it for writing"
        )

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(fd, warehouse, write, wait_seconds)
    except BaseException:
        os.close(fd)
        raise
    with _locks_guard:
        existing = _locks_in_process.get(path)
        if existing:
            # Another thread took a shared lock while this one waited. Both locks are
            # shared, so this thread joins that one and closes its own.
            _locks_in_process[path] = (existing[0], existing[1], existing[2] + 1)
            os.close(fd)
        else:
            _locks_in_process[path] = (fd, write, 1)
    if write and not existing:
        _record_holder(warehouse, purpose)
    try:
        yield
    finally:
        _release(path)


def _acquire(fd: int, warehouse: Path, write: bool, wait_seconds: float) -> None:
    mode = fcntl.LOCK_EX if write else fcntl.LOCK_SH
    started = time.monotonic()
    announced = False
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            if announced:
                log.info(
                    "the warehouse is free after %.1f s", time.monotonic() - started
                )
            return
        except BlockingIOError:
            pass
        waited = time.monotonic() - started
        if not announced:
            log.info(
                "waiting for the warehouse %s, in use by %s",
                warehouse.name,
                describe_holder(warehouse),
            )
            announced = True
        if waited >= wait_seconds:
            raise WarehouseBusyError(
                f"the warehouse {warehouse} is still in use by "
                f"{describe_holder(warehouse)} after {waited:.0f} s of waiting. Let "
                "that run finish, or stop it in the Dagster UI; to wait longer, set "
                "CREDIT_ETL_LOCK_WAIT_SECONDS"
            )
        time.sleep(min(POLL_SECONDS, max(wait_seconds - waited, 0.01)))


def _record_holder(warehouse: Path, purpose: str) -> None:
    record = {
        "pid": os.getpid(),
        "purpose": purpose or " ".join(Path(a).name for a in sys.argv[:2]),
        "since": time.time(),
    }
    target = holder_path(warehouse)
    scratch = target.with_name(f"{target.name}.{os.getpid()}")
    try:
        scratch.write_text(json.dumps(record), encoding="utf-8")
        os.replace(scratch, target)
    except OSError as error:
        log.debug("could not record the warehouse holder: %s", error)


def _release(path: Path) -> None:
    with _locks_guard:
        fd, write, count = _locks_in_process[path]
        if count > 1:
            _locks_in_process[path] = (fd, write, count - 1)
            return
        del _locks_in_process[path]
    # Closing the file releases the lock. The holder record stays until the next
    # writer replaces it, and it is read only while another process has the gate.
    os.close(fd)


def outside_holder(message: str) -> str:
    """Name the program behind a DuckDB lock error: PID and command line."""
    found = re.search(r"PID (\d+)", message)
    if not found:
        return "another program"
    pid = found.group(1)
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        command = " ".join(
            part.decode("utf-8", "replace") for part in raw.split(b"\0") if part
        )
    except OSError:
        command = ""
    return f"PID {pid}" + (f" ({command[:200]})" if command else "")
