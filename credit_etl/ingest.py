"""Land delivered files in the warehouse, one file per transaction.

For each new file: hash it, detect its encoding, stage its rows in DuckDB, validate
them in SQL, keep rejected rows whole in ``rejects``, upsert valid rows by natural key
(a repeated key replaces the record's fields and keeps its first received date), and
write the file's ledger row. All of that commits together, so after a crash a file is
either fully landed or not at all, and the next run picks it up again.
"""

from __future__ import annotations

import json
import logging
import stat
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb
import pandas as pd

from credit_etl.discovery import Delivery, NameProblem, Scan, scan_incoming
from credit_etl.masking import mask_text
from credit_etl.readers import (
    FileError,
    Fingerprint,
    HeaderMap,
    check_xlsx_container,
    clip_field,
    fingerprint,
    has_interior_blank_line,
    line_of_offset,
    map_header,
    missing_required,
    read_csv_header,
    read_workbook,
    transcode_to_utf8,
)
from credit_etl.registry import Unit, load_units
from credit_etl.schema import SPECS, CategorySpec, storage_columns
from credit_etl.settings import Settings
from credit_etl.sqlmacros import install_macros
from credit_etl.validation import build_checked_sql

log = logging.getLogger(__name__)

XLSX_BATCH_ROWS = 20_000
# From this many staged rows on, validation uses the longer statement whose short
# cuts save more time than its planning costs (measured on DuckDB 2.0, 2 cores).
SHORTCUT_ROWS = 20_000

STATUS_LANDED = "landed"
STATUS_DUPLICATE = "duplicate"
STATUS_FAILED = "failed"
STATUS_NOT_READ = "not_read"


@dataclass
class FileResult:
    rel_path: str
    status: str
    file_id: int | None = None
    unit_id: str | None = None
    category: str | None = None
    rows_read: int | None = None
    rows_landed: int | None = None
    rows_rejected: int | None = None
    rows_repeated: int | None = None
    error: str | None = None
    duplicate_of: str | None = None
    notes: list[str] = field(default_factory=list)
    # Standard columns the file delivered, by key: compared between deliveries.
    columns: list[str] = field(default_factory=list)


@dataclass
class IngestReport:
    results: list[FileResult]
    problems: list[NameProblem]
    skipped: list[str]

    @property
    def landed(self) -> list[FileResult]:
        return [r for r in self.results if r.status == STATUS_LANDED]

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for result in self.results:
            counts[result.status] = counts.get(result.status, 0) + 1
        counts["rows_landed"] = sum(r.rows_landed or 0 for r in self.results)
        counts["rows_rejected"] = sum(r.rows_rejected or 0 for r in self.results)
        counts["rows_repeated"] = sum(r.rows_repeated or 0 for r in self.results)
        counts["not_read"] = len(self.problems)
        return counts


def ingest_incoming(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    units: list[Unit] | None = None,
    now: float | None = None,
) -> IngestReport:
    """Ingest every new settled delivery under incoming/.

    Files of one unit and category land one after another, in received-date order.
    Up to ``settings.ingest_workers`` files of different units or categories land at
    once, each in its own transaction on its own cursor. Their natural keys never
    meet, since keys are matched within a unit and category.
    """
    units = units or load_units()
    scan: Scan = scan_incoming(
        settings.incoming_dir, units, settings.settle_seconds, now
    )
    for problem in scan.problems:
        _record_name_problem(con, problem)
    pending = [d for d in scan.deliveries if not _unchanged(con, d)]
    # A run has the warehouse to itself, so a transcoded copy found now was left by a
    # run that was killed while it landed the file.
    for leftover in settings.temp_dir.glob("transcoded-*.csv"):
        leftover.unlink(missing_ok=True)
    results: list[FileResult | None] = [None] * len(pending)
    workers = max(1, min(settings.ingest_workers, len(pending)))
    # Files are hashed in a thread ahead of the workers. DuckDB releases the GIL
    # while a statement runs, so hashing overlaps the landing of earlier files.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fingerprint") as hasher:
        queue = _FileQueue(pending, hasher, look_ahead=workers + 1)
        if workers == 1:
            _land_queued(con, settings, queue, results)
        else:
            _land_in_parallel(con, settings, queue, results, workers)
    return IngestReport(
        results=[r for r in results if r is not None],
        problems=scan.problems,
        skipped=[f"{s.rel_path}: {s.reason}" for s in scan.skipped],
    )


# A workbook larger than this lands alone: the XLSX reader keeps a whole sheet in
# memory, about 80 bytes a cell, and a 22.6 MB sheet of 6 million cells took 833 MiB.
ALONE_XLSX_BYTES = 8 * 1024**2
# A CSV file larger than this lands alone. DuckDB already spreads its statements over
# every thread, so a second file beside it only competes for the cores: at full
# volume, 1.9-million-row files took 10 s each beside other files and 4.4 s alone.
ALONE_CSV_BYTES = 32 * 1024**2


class _FileQueue:
    """Hand out pending files so that no two of one unit and category land at once.

    Each unit and category forms a lane whose files start in their given order. The
    lane with the most bytes goes first. Small files land side by side, so that the
    planning, Python work and commit of one overlap DuckDB's work on another. A large
    file lands alone.
    """

    def __init__(
        self, pending: list[Delivery], hasher: ThreadPoolExecutor, look_ahead: int
    ) -> None:
        self.pending = pending
        self.hasher = hasher
        self.look_ahead = look_ahead
        lanes: dict[tuple[str, str], list[int]] = {}
        for index, delivery in enumerate(pending):
            lanes.setdefault((delivery.unit_id, delivery.category), []).append(index)
        self.lanes = dict(
            sorted(
                lanes.items(),
                key=lambda item: -sum(pending[i].size_bytes for i in item[1]),
            )
        )
        self.busy: set[tuple[str, str]] = set()
        self.running = 0
        self.alone = False
        self.stopped = False
        self.hashes: dict[int, Future[Fingerprint]] = {}
        self.condition = threading.Condition()

    def _is_alone(self, index: int) -> bool:
        delivery = self.pending[index]
        if delivery.extension == ".csv":
            return delivery.size_bytes > ALONE_CSV_BYTES
        return delivery.size_bytes > ALONE_XLSX_BYTES

    def _hash(self, index: int) -> None:
        if index not in self.hashes:
            delivery = self.pending[index]
            self.hashes[index] = self.hasher.submit(
                fingerprint, delivery.path, delivery.extension == ".csv"
            )

    def _choose(self) -> int | None:
        """Return the next file that may start now, or None to wait."""
        if self.alone:
            return None
        for lane, indexes in self.lanes.items():
            if not indexes or lane in self.busy:
                continue
            head = indexes[0]
            if not self._is_alone(head):
                return head
            # A large file waits for the running files and starts nothing new in
            # the meantime, so it is not passed over until the end.
            return head if self.running == 0 else None
        return None

    def take(self) -> tuple[int, Future[Fingerprint]] | None:
        """Return the next file to land and its fingerprint, or None when none is left."""
        with self.condition:
            while True:
                if self.stopped or not any(self.lanes.values()):
                    return None
                chosen = self._choose()
                if chosen is not None:
                    break
                self.condition.wait()
            delivery = self.pending[chosen]
            lane = (delivery.unit_id, delivery.category)
            self.lanes[lane].pop(0)
            self.busy.add(lane)
            self.running += 1
            self.alone = self._is_alone(chosen)
            self._hash(chosen)
            # The heads of the next lanes are the likeliest files to start next.
            upcoming = [indexes[0] for indexes in self.lanes.values() if indexes]
            for index in upcoming[: self.look_ahead]:
                self._hash(index)
            return chosen, self.hashes.pop(chosen)

    def done(self, index: int) -> None:
        with self.condition:
            delivery = self.pending[index]
            self.busy.discard((delivery.unit_id, delivery.category))
            self.running -= 1
            self.alone = False
            self.condition.notify_all()

    def stop(self) -> None:
        """Start no further file. The files already started still finish."""
        with self.condition:
            self.stopped = True
            for future in self.hashes.values():
                future.cancel()
            self.condition.notify_all()


def _land_queued(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    queue: _FileQueue,
    results: list[FileResult | None],
) -> None:
    try:
        while (taken := queue.take()) is not None:
            index, hashed = taken
            try:
                results[index] = ingest_file(
                    con, settings, queue.pending[index], hashed
                )
            finally:
                queue.done(index)
    finally:
        queue.stop()


def _land_in_parallel(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    queue: _FileQueue,
    results: list[FileResult | None],
    workers: int,
) -> None:
    def work() -> None:
        # A cursor is a new connection to the same database, without the temporary
        # macros of the first one.
        cursor = con.cursor()
        install_macros(cursor)
        try:
            _land_queued(cursor, settings, queue, results)
        finally:
            cursor.close()

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest") as pool:
        futures = [pool.submit(work) for _ in range(workers)]
        try:
            for future in futures:
                future.result()
        finally:
            # An error or an interrupt in one worker stops the others after the file
            # each is landing, and the first error is raised.
            # NOTE: a second Ctrl-C cuts the wait for the workers short. The caller
            # then closes the warehouse and releases the gate while a worker may
            # still commit its file. Each file stays atomic, but another process
            # can meet DuckDB's lock and name this one as an outside program.
            queue.stop()


def _record_name_problem(con: duckdb.DuckDBPyConnection, problem: NameProblem) -> None:
    # Only regular files are hashed: a symbolic link or a FIFO is never opened,
    # since reading one could block or read outside incoming/.
    try:
        info = problem.path.lstat()
        if stat.S_ISREG(info.st_mode):
            sha = fingerprint(problem.path, sniff_encoding=False).sha256
        else:
            sha = f"not a regular file, size {info.st_size}, mtime {int(info.st_mtime)}"
    except OSError as error:
        sha = f"unreadable: {error.strerror}"
    seen = con.execute(
        "SELECT 1 FROM ledger WHERE path = ? AND sha256 = ?", [problem.rel_path, sha]
    ).fetchone()
    if seen:
        return
    log.warning(
        "not read: incoming/%s: %s; expected %s",
        problem.rel_path,
        problem.problem,
        problem.expected,
    )
    con.execute(
        """INSERT INTO ledger (file_id, path, sha256, status, error)
           VALUES (nextval('ledger_file_id'), ?, ?, ?, ?)""",
        [
            problem.rel_path,
            sha,
            STATUS_NOT_READ,
            f"{problem.problem}; expected {problem.expected}",
        ],
    )


def _unchanged(con: duckdb.DuckDBPyConnection, delivery: Delivery) -> bool:
    """Return True when a ledger row has this file's path, size and modification time."""
    found = con.execute(
        "SELECT 1 FROM ledger WHERE path = ? AND size_bytes = ? AND mtime = ?",
        [delivery.rel_path, delivery.size_bytes, delivery.mtime],
    ).fetchone()
    return found is not None


def ingest_file(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    delivery: Delivery,
    hashed: Future[Fingerprint] | None = None,
) -> FileResult | None:
    """Ingest one delivery; return None when the same bytes at this path are known.

    ``hashed`` is the file's fingerprint computed ahead, if any.
    """
    limits = settings.limits
    sniff = delivery.extension == ".csv"
    print_path = f"incoming/{delivery.rel_path}"
    # A file whose path, size and modification time match a ledger row is not
    # hashed again, so a run with no new files costs one look-up per file.
    if hashed is None and _unchanged(con, delivery):
        return None
    if hashed is not None:
        fp = hashed.result()
    else:
        fp = fingerprint(delivery.path, sniff_encoding=sniff)

    known = con.execute(
        "SELECT file_id FROM ledger WHERE path = ? AND sha256 = ?",
        [delivery.rel_path, fp.sha256],
    ).fetchone()
    if known:
        # Same bytes with a new modification time (touched or copied again).
        con.execute(
            "UPDATE ledger SET mtime = ? WHERE file_id = ?",
            [delivery.mtime, known[0]],
        )
        return None

    base = FileResult(
        rel_path=delivery.rel_path,
        status=STATUS_LANDED,
        unit_id=delivery.unit_id,
        category=delivery.category,
    )
    # A copy counts as a duplicate only within the same unit and category. The
    # same bytes filed for another unit or list are that unit's or list's records.
    earlier = con.execute(
        """SELECT file_id, path FROM ledger
           WHERE sha256 = ? AND status = 'landed' AND unit_id = ? AND category = ?
           ORDER BY file_id LIMIT 1""",
        [fp.sha256, delivery.unit_id, delivery.category],
    ).fetchone()
    if earlier:
        base.status = STATUS_DUPLICATE
        base.duplicate_of = earlier[1]
        base.error = (
            f"same bytes as incoming/{earlier[1]}, already landed; adds nothing"
        )
        base.file_id = _write_ledger(con, delivery, fp, base, duplicate_of=earlier[0])
        log.info("duplicate: %s is a copy of incoming/%s", print_path, earlier[1])
        return base

    if fp.size_bytes > limits.max_file_bytes:
        base.status = STATUS_FAILED
        base.error = (
            f"the file has {fp.size_bytes:,} bytes, more than the limit of "
            f"{limits.max_file_bytes:,}; split it into several files"
        )
        base.file_id = _write_ledger(con, delivery, fp, base)
        log.error("failed: %s: %s", print_path, base.error)
        return base

    started = time.monotonic()
    in_transaction = False
    try:
        # Staging runs outside the transaction: temp tables vanish with the
        # connection anyway, and rows of a committed table get row ids in
        # insertion order, which number the records of a CSV file.
        staged = _stage(con, settings, delivery, fp, base)
        con.execute("BEGIN TRANSACTION")
        in_transaction = True
        file_id = con.execute("SELECT nextval('ledger_file_id')").fetchone()[0]
        base.file_id = file_id
        _land(con, settings, delivery, staged, base)
        _write_ledger(con, delivery, fp, base, file_id=file_id)
        con.execute("COMMIT")
        in_transaction = False
    except (FileError, UnicodeDecodeError) as error:
        if in_transaction:
            con.execute("ROLLBACK")
        if isinstance(error, UnicodeDecodeError):
            error = FileError(
                f"the file is not valid {fp.encoding}: the bytes "
                f"{error.object[error.start : error.start + 4]!r} cannot be decoded. "
                "Save it again as UTF-8 (CSV UTF-8), or as GB18030 without a "
                "byte-order mark"
            )
        base = FileResult(
            rel_path=delivery.rel_path,
            status=STATUS_FAILED,
            unit_id=delivery.unit_id,
            category=delivery.category,
            error=str(error),
        )
        base.file_id = _write_ledger(con, delivery, fp, base)
        log.error("failed: %s: %s", print_path, error)
        return base
    except BaseException:
        if in_transaction:
            con.execute("ROLLBACK")
        raise
    finally:
        _drop_temp(con)
        _transcoded_path(settings, fp).unlink(missing_ok=True)

    log.info(
        "landed: %s (unit %s, %s, received %s): read %d, landed %d, rejected %d, "
        "repeated %d in %.1f s",
        print_path,
        delivery.unit_id,
        delivery.category,
        delivery.received_date,
        base.rows_read,
        base.rows_landed,
        base.rows_rejected,
        base.rows_repeated,
        time.monotonic() - started,
    )
    return base


def _drop_temp(con: duckdb.DuckDBPyConnection) -> None:
    """Drop the staging tables and views of the file just handled."""
    rows = con.execute(
        """SELECT 'TABLE', table_name FROM duckdb_tables()
           WHERE temporary AND regexp_matches(table_name, '^(stage|checked|matched)_')
           UNION ALL
           SELECT 'VIEW', view_name FROM duckdb_views()
           WHERE temporary AND regexp_matches(view_name, '^stage_')"""
    ).fetchall()
    for kind, name in sorted(rows, key=lambda row: row[0] == "TABLE"):
        con.execute(f"DROP {kind} IF EXISTS temp.{name}")


def _write_ledger(
    con: duckdb.DuckDBPyConnection,
    delivery: Delivery,
    fp,
    result: FileResult,
    file_id: int | None = None,
    duplicate_of: int | None = None,
) -> int:
    if file_id is None:
        file_id = con.execute("SELECT nextval('ledger_file_id')").fetchone()[0]
    con.execute(
        """INSERT INTO ledger (file_id, path, sha256, size_bytes, unit_id, category,
               received_date, encoding, rows_read, rows_landed, rows_rejected,
               rows_repeated, status, error, duplicate_of, notes, columns, mtime)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        [
            file_id,
            delivery.rel_path,
            fp.sha256,
            fp.size_bytes,
            delivery.unit_id,
            delivery.category,
            delivery.received_date,
            fp.encoding if delivery.extension == ".csv" else "xlsx",
            result.rows_read,
            result.rows_landed,
            result.rows_rejected,
            result.rows_repeated,
            result.status,
            result.error,
            duplicate_of,
            json.dumps(result.notes, ensure_ascii=False) if result.notes else None,
            json.dumps(sorted(set(result.columns))) if result.columns else None,
            delivery.mtime,
        ],
    )
    return file_id


# --------------------------------------------------------------------------- staging


def _stage(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    delivery: Delivery,
    fp,
    result: FileResult,
) -> list[tuple[str, HeaderMap]]:
    spec = SPECS[delivery.category]
    if delivery.extension == ".csv":
        return [_stage_csv(con, settings, delivery, fp, spec, result)]
    return _stage_xlsx(con, settings, delivery, spec, result)


def _land(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    delivery: Delivery,
    staged: list[tuple[str, HeaderMap]],
    result: FileResult,
) -> None:
    spec = SPECS[delivery.category]
    totals = dict(read=0, landed=0, rejected=0, repeated=0)
    for index, (stage, header) in enumerate(staged):
        counts = _validate_and_upsert(
            con, settings, delivery, spec, header, stage, f"checked_{index}", result
        )
        for key, value in counts.items():
            totals[key] += value
    result.rows_read = totals["read"]
    result.rows_landed = totals["landed"]
    result.rows_rejected = totals["rejected"]
    result.rows_repeated = totals["repeated"]


def _check_header(spec: CategorySpec, header: HeaderMap, result: FileResult) -> None:
    result.columns.extend(header.by_key)
    missing = missing_required(spec, header)
    named = [n for n in header.names if n and n.strip()]
    if missing and len(header.by_key) * 2 < len(named):
        # Most cells are not column names, so the first row is probably data: it
        # is not echoed, since it may hold a person's name or ID number.
        raise FileError(
            f"the first row is not a header row: {len(header.by_key)} of its "
            f"{len(named)} cells are standard column names. Put the column names "
            f"in the first row, for example {', '.join(spec.column(k).name_zh for k in spec.required)}"
            " and 统一社会信用代码 or 证件号码"
        )
    if missing:
        recognised = [header.names[position] for position in header.by_key.values()]
        raise FileError(
            f"required columns missing from the header: {', '.join(missing)}; the "
            f"header has the standard columns {', '.join(recognised)} and "
            f"{len(named) - len(recognised)} others. Use the column names of the "
            "national double-publicity standard"
        )
    if header.unknown:
        shown = [mask_text(name)[:40] for name in header.unknown]
        result.notes.append("columns not in the standard, ignored: " + ", ".join(shown))
    if header.duplicates:
        result.notes.append(
            "columns given twice, the first one is used: "
            + ", ".join(header.duplicates)
        )


def _transcoded_path(settings: Settings, fp: Fingerprint) -> Path:
    # Two copies of one file may land at once for different units, so the name
    # carries the landing thread.
    return (
        settings.temp_dir / f"transcoded-{fp.sha256[:16]}-{threading.get_ident()}.csv"
    )


def _stage_csv(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    delivery: Delivery,
    fp,
    spec: CategorySpec,
    result: FileResult,
) -> tuple[str, HeaderMap]:
    source = delivery.path
    encoding = fp.encoding
    lines = fp.lines
    if encoding not in ("utf-8", "utf-8-sig"):
        target = _transcoded_path(settings, fp)
        try:
            lines = transcode_to_utf8(delivery.path, encoding, target)
        except FileError:
            # Neither UTF-8 nor GB18030. A file that is UTF-8 for its first kilobyte
            # is most likely UTF-8 with a damaged byte, so that byte is named.
            damaged = fp.utf8_error_offset
            if encoding != "gb18030" or damaged is None or damaged < 1024:
                raise
            raise FileError(
                f"the file is UTF-8 up to byte {damaged:,} (row "
                f"{line_of_offset(delivery.path, damaged)}), where a byte is not "
                "valid UTF-8, and it is not GB18030 either. Retype or delete the "
                "character at that place and send the file again as UTF-8"
            ) from None
        source = target
        encoding = "utf-8"
    names, delimiter = read_csv_header(source, "utf-8-sig")
    header = map_header(spec, names)
    _check_header(spec, header, result)
    width = len(names)
    columns = "{" + ", ".join(f"'c{pos}': 'VARCHAR'" for pos in range(width)) + "}"
    try:
        con.execute(
            f"""CREATE TEMP TABLE stage_raw AS SELECT * FROM read_csv(
                    $path, header = true, columns = {columns}, delim = $delim,
                    quote = '"', escape = '"', auto_detect = false,
                    strict_mode = true, null_padding = false, encoding = 'utf-8',
                    max_line_size = 16777216)""",
            {"path": str(source), "delim": delimiter},
        )
    except duckdb.Error as error:
        # The fast path refuses rows whose field count differs from the header;
        # the exact path below keeps such rows as rejects instead.
        log.info(
            "incoming/%s: DuckDB's reader stopped (%s); reading row by row",
            delivery.rel_path,
            str(error).splitlines()[0],
        )
        con.execute("DROP TABLE IF EXISTS temp.stage_raw")
        return (
            _stage_csv_exact(
                con, source, delimiter, header, settings.limits.max_field_chars
            ),
            header,
        )
    # DuckDB's reader skips empty lines, which would shift the row numbers of every
    # later record. With one line per record after the header, there is none. More
    # lines come from empty lines, quoted line breaks or CR line ends, and only then
    # is the file scanned for an empty line between records.
    staged = con.execute("SELECT count(*) FROM stage_raw").fetchone()[0]
    if lines != staged + 1 and has_interior_blank_line(source):
        log.info(
            "incoming/%s has empty lines between records; reading row by row to keep "
            "row numbers",
            delivery.rel_path,
        )
        con.execute("DROP TABLE temp.stage_raw")
        return (
            _stage_csv_exact(
                con, source, delimiter, header, settings.limits.max_field_chars
            ),
            header,
        )
    con.execute(
        "CREATE TEMP VIEW stage_0 AS SELECT CAST(rowid + 2 AS INTEGER) AS row_no, "
        "CAST(NULL AS VARCHAR) AS sheet, CAST(NULL AS VARCHAR) AS issue_column, "
        "CAST(NULL AS VARCHAR) AS issue, * FROM stage_raw"
    )
    return "stage_0", header


def _create_stage_table(con: duckdb.DuckDBPyConnection, name: str, width: int) -> None:
    columns = ", ".join(f"c{pos} VARCHAR" for pos in range(width))
    con.execute(
        f"CREATE TEMP TABLE {name} (row_no INTEGER, sheet VARCHAR, "
        f"issue_column VARCHAR, issue VARCHAR, {columns})"
    )


def _append_batch(
    con: duckdb.DuckDBPyConnection, name: str, width: int, batch: list[list]
) -> None:
    frame = pd.DataFrame(
        batch,
        columns=["row_no", "sheet", "issue_column", "issue"]
        + [f"c{pos}" for pos in range(width)],
        dtype=object,
    )
    con.register("stage_batch", frame)
    try:
        con.execute(f"INSERT INTO {name} SELECT * FROM stage_batch")
    finally:
        con.unregister("stage_batch")


def _stage_csv_exact(
    con: duckdb.DuckDBPyConnection,
    source: Path,
    delimiter: str,
    header: HeaderMap,
    max_field_chars: int,
) -> str:
    """Parse with Python's csv module, keeping ragged rows as rejects."""
    import csv

    # The module's own limit (131,072 characters) would stop the whole file; long
    # fields are cut and rejected per row instead.
    csv.field_size_limit(max(max_field_chars * 4, 1 << 30))
    width = len(header.names)
    name = "stage_0"
    _create_stage_table(con, name, width)
    batch: list[list] = []
    with source.open("r", encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter, strict=False)
        next(reader, None)
        record_no = 1
        while True:
            record_no += 1
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as error:
                raise FileError(
                    f"row {record_no} cannot be parsed as CSV ({error}); check that "
                    "quotes are closed and fields are separated by commas"
                ) from None
            if not any(f.strip() for f in fields):
                continue
            issue = None
            if len(fields) != width:
                issue = (
                    f"the row has {len(fields)} fields but the header has {width}; "
                    "check for a missing or extra comma, or a quote that is not closed"
                )
            # Empty fields become NULL, as DuckDB's reader makes them, so a row
            # gets the same key whichever reader parsed it.
            values = ([f if f != "" else None for f in fields] + [None] * width)[:width]
            for position, value in enumerate(values):
                clipped, too_long = clip_field(value, max_field_chars)
                values[position] = clipped
                issue = issue or too_long
            batch.append([record_no, None, None, issue, *values])
            if len(batch) >= XLSX_BATCH_ROWS:
                _append_batch(con, name, width, batch)
                batch = []
    if batch:
        _append_batch(con, name, width, batch)
    return name


def _stage_xlsx(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    delivery: Delivery,
    spec: CategorySpec,
    result: FileResult,
) -> list[tuple[str, HeaderMap]]:
    limits = settings.limits
    check_xlsx_container(
        delivery.path, limits.max_xlsx_uncompressed_bytes, limits.max_xlsx_cells
    )
    workbook = read_workbook(
        delivery.path, spec, limits.max_xlsx_cells, limits.max_field_chars
    )
    for skipped in workbook.skipped_sheets:
        result.notes.append(f"sheet skipped: {skipped}")
    if not workbook.sheets:
        raise FileError(
            "no worksheet has the required columns of a "
            f"{spec.category} file: " + "; ".join(workbook.skipped_sheets)
        )
    staged = []
    for index, sheet in enumerate(workbook.sheets):
        _check_header(spec, sheet.header, result)
        if len(workbook.sheets) > 1 or workbook.skipped_sheets:
            result.notes.append(
                f"sheet read: {sheet.name}, header in row {sheet.header_row}"
            )
        width = len(sheet.header.names)
        name = f"stage_{index}"
        _create_stage_table(con, name, width)
        batch: list[list] = []
        for row_no, values, issue_column, issue in sheet.rows:
            batch.append([row_no, sheet.name, issue_column, issue, *values])
            if len(batch) >= XLSX_BATCH_ROWS:
                _append_batch(con, name, width, batch)
                batch = []
        if batch:
            _append_batch(con, name, width, batch)
        staged.append((name, sheet.header))
    # The same note may come from several sheets.
    result.notes = list(dict.fromkeys(result.notes))
    return staged


# --------------------------------------------------------------------------- upsert


def _validate_and_upsert(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    delivery: Delivery,
    spec: CategorySpec,
    header: HeaderMap,
    stage: str,
    checked: str,
    result: FileResult,
) -> dict[str, int]:
    staged_rows = con.execute(f"SELECT count(*) FROM {stage}").fetchone()[0]
    query = build_checked_sql(
        spec,
        header,
        stage,
        checked,
        delivery.received_date,
        settings.limits.max_field_chars,
        shortcuts=staged_rows >= SHORTCUT_ROWS,
    )
    con.execute(query.sql, query.params)
    meta = {
        "file_id": result.file_id,
        "path": delivery.rel_path,
        "unit_id": delivery.unit_id,
        "category": delivery.category,
    }
    rows_read, rejected, unique, flagged = con.execute(
        f"""SELECT count(*), count(*) FILTER (WHERE reject IS NOT NULL),
                   count(DISTINCT key_hash) FILTER (WHERE reject IS NULL),
                   count(*) FILTER (WHERE reject IS NULL AND flag_text IS NOT NULL)
            FROM {checked}"""
    ).fetchone()
    if rejected:
        con.execute(
            f"""INSERT INTO rejects SELECT $file_id, $path, $unit_id, $category,
                   k.sheet, k.row_no, k.reject.col, k.reject.val, k.reject.why,
                   {query.record_sql}
               FROM {checked} k JOIN {stage} s ON s.row_no = k.row_no
               WHERE k.reject IS NOT NULL""",
            {**meta, **query.record_params},
        )
    if flagged:
        con.execute(
            f"""INSERT INTO row_flags SELECT $file_id, $path, $unit_id, sheet, row_no,
                   f.col, f.flag
               FROM (SELECT sheet, row_no, split_part(item, chr(31), 1) AS col,
                            split_part(item, chr(31), 2) AS flag
                     FROM (SELECT sheet, row_no,
                                  unnest(string_split(flag_text, chr(30))) AS item
                           FROM {checked}
                           WHERE reject IS NULL AND flag_text IS NOT NULL)) f""",
            {k: meta[k] for k in ("file_id", "path", "unit_id")},
        )

    valid = rows_read - rejected
    # The last row of a key within the file wins, as a later delivery would.
    winners = f"(SELECT * FROM {checked} WHERE reject IS NULL)"
    if unique < valid:
        winners = f"""(SELECT * FROM {checked} WHERE reject IS NULL
            QUALIFY row_number() OVER (PARTITION BY key_hash ORDER BY row_no DESC) = 1)"""

    table = spec.table
    matched = f"matched_{checked}"
    scope = {
        "unit_id": delivery.unit_id,
        "category": delivery.category,
        "received": delivery.received_date,
    }
    con.execute(
        f"""CREATE TEMP TABLE {matched} AS
            SELECT r.key_hash, min(r.received_date) AS first_received,
                   max(r.fields_received_date) AS fields_received
            FROM {table} r
            SEMI JOIN (SELECT key_hash FROM {checked} WHERE reject IS NULL) w
                ON r.key_hash = w.key_hash
            WHERE r.unit_id = $unit_id AND r.category = $category
            GROUP BY r.key_hash""",
        {"unit_id": delivery.unit_id, "category": delivery.category},
    )
    repeated_keys = con.execute(f"SELECT count(*) FROM {matched}").fetchone()[0]
    if repeated_keys:
        # Fields delivered with a later received date win, whatever the order in
        # which files land; an older file only moves the first received date back.
        con.execute(
            f"""UPDATE {table} SET received_date = $received
                WHERE unit_id = $unit_id AND category = $category
                  AND received_date > $received
                  AND key_hash IN (SELECT key_hash FROM {matched}
                                   WHERE fields_received > $received)""",
            scope,
        )
        con.execute(
            f"""DELETE FROM {table} WHERE unit_id = $unit_id AND category = $category
                AND key_hash IN (SELECT key_hash FROM {matched}
                                 WHERE fields_received <= $received)""",
            scope,
        )

    stored = storage_columns(table)
    delivered_keys = {column.key for column in spec.columns}
    values = [
        (column.key if column.key in delivered_keys else "NULL") for column in stored
    ]
    typed_names, typed_values = _typed_columns(spec)
    # An invalid identifier beside a valid one is not stored; its flag keeps it.
    invalid_ok = {
        "uscc": "CASE WHEN w.uscc_problem IS NULL THEN w.uscc END",
        "id_number": "CASE WHEN w.id_problem IS NULL THEN w.id_number END",
    }
    stored_values = [invalid_ok.get(v, f"w.{v}") if v != "NULL" else v for v in values]
    con.execute(
        f"""INSERT INTO {table} (unit_id, category, key_hash, received_date,
                fields_received_date, file_id, sheet, row_no, flags,
                {", ".join(typed_names + [c.key for c in stored])})
            SELECT $unit_id, $category, w.key_hash,
                   least(coalesce(m.first_received, $received), $received),
                   $received, $file_id, w.sheet, w.row_no,
                   CASE WHEN w.flag_text IS NOT NULL THEN array_to_string(
                       list_transform(string_split(w.flag_text, chr(30)),
                                      lambda f: split_part(f, chr(31), 2)), '; ')
                   END,
                   {", ".join(typed_values + stored_values)}
            FROM {winners} w LEFT JOIN {matched} m ON m.key_hash = w.key_hash
            WHERE m.key_hash IS NULL OR m.fields_received <= $received""",
        {**scope, "file_id": result.file_id},
    )
    return {
        "read": rows_read,
        "landed": unique - repeated_keys,
        "rejected": rejected,
        "repeated": (valid - unique) + repeated_keys,
    }


def _typed_columns(spec: CategorySpec) -> tuple[list[str], list[str]]:
    names: list[str] = []
    values: list[str] = []
    if spec.event_date:
        names.append(f"{spec.event_date}_value")
        values.append(f"w.{spec.event_date}_value")
    if spec.category == "commitment":
        names.append("commitment_type_value")
        values.append("w.commitment_type_value")
    if spec.category == "penalty":
        names.append("fine_amount_value")
        values.append("w.fine_amount_value")
    if spec.keeps_unknown_columns:
        names.append("extra")
        values.append("w.extra")
    return names, values


def result_as_dict(result: FileResult) -> dict:
    return asdict(result)
