"""Landing several files at once: the same warehouse as one at a time, and the queue.

The warehouse tests ingest the same deliveries with one worker and with three into
real DuckDB files and compare what landed. The queue tests drive the file queue from
threads on real files and record which files ran side by side.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import RECORD_TABLES, csv_bytes, make_id, make_uscc, set_mtime, xlsx_bytes

from credit_etl import ingest
from credit_etl.discovery import Delivery
from credit_etl.ingest import (
    ALONE_CSV_BYTES,
    ALONE_XLSX_BYTES,
    IngestReport,
    ingest_incoming,
)
from credit_etl.settings import Settings
from credit_etl.warehouse import connect

PENALTY_HEADER = [
    "行政相对人名称",
    "统一社会信用代码",
    "行政处罚决定书文号",
    "处罚决定日期",
]
LICENSE_HEADER = ["行政相对人名称", "证件号码", "行政许可决定文书号", "许可决定日期"]
OTHER_HEADER = ["记录编号", "主体名称", "统一社会信用代码", "信息类别"]


def write(incoming: Path, rel_path: str, data: bytes) -> None:
    path = incoming / rel_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def deliver_mixed(incoming: Path) -> None:
    """Write deliveries of several units and categories, with re-deliveries and copies."""
    for unit_index, unit in enumerate(("hongqi", "weibin", "fengquan", "muye")):
        penalties = [
            [
                "新乡市某某有限公司",
                make_uscc(unit_index * 1000 + n),
                f"罚〔2018〕{n}号",
                "2018-10-02",
            ]
            for n in range(300)
        ]
        write(
            incoming,
            f"{unit}/20181005_penalty.csv",
            csv_bytes(PENALTY_HEADER, penalties),
        )
        # A later re-delivery changes a third of the rows and adds new ones.
        changed = [
            [
                "新乡市改名有限公司",
                make_uscc(unit_index * 1000 + n),
                f"罚〔2018〕{n}号",
                "2018-10-03",
            ]
            for n in range(200, 400)
        ]
        write(
            incoming, f"{unit}/20181020_penalty.csv", csv_bytes(PENALTY_HEADER, changed)
        )
        licenses = [
            [
                "张三",
                make_id(f"41070219850412{n:03d}"),
                f"许〔2018〕{n}号",
                "2018-11-02",
            ]
            for n in range(250)
        ]
        write(
            incoming,
            f"{unit}/20181105_license.csv",
            csv_bytes(LICENSE_HEADER, licenses, encoding="gb18030"),
        )
        others = [
            [f"R{unit}{n}", "某单位", make_uscc(n, "92410700"), "参保"]
            for n in range(500)
        ]
        write(incoming, f"{unit}/20181110_other.csv", csv_bytes(OTHER_HEADER, others))
        write(
            incoming,
            f"{unit}/20181201_other.xlsx",
            xlsx_bytes(
                OTHER_HEADER, others[:40] + [[f"X{unit}", "某单位", "", "参保"]]
            ),
        )
    # The same bytes filed for two units are each unit's records. A second copy
    # in one unit's folder adds nothing.
    shared = csv_bytes(
        PENALTY_HEADER,
        [["新乡市共享有限公司", make_uscc(9999), "共〔2018〕1号", "2018-10-09"]],
    )
    write(incoming, "hongqi/20181015_penalty.csv", shared)
    write(incoming, "weibin/20181015_penalty.csv", shared)
    write(incoming, "weibin/20181016_penalty.csv", shared)
    set_mtime(incoming)


def ingest_all(settings: Settings) -> IngestReport:
    """Ingest every delivery of ``settings`` on a new connection to its warehouse."""
    con = connect(settings)
    try:
        return ingest_incoming(con, settings)
    finally:
        con.close()


def landed_state(settings: Settings) -> dict[str, list[tuple]]:
    """Return every landed row and ledger line, named by path rather than file id."""
    con = connect(settings, read_only=True)
    try:
        state = {
            "ledger": con.execute(
                """SELECT path, status, rows_read, rows_landed, rows_rejected,
                          rows_repeated, error, duplicate_of IS NOT NULL
                   FROM ledger ORDER BY path"""
            ).fetchall()
        }
        for table in RECORD_TABLES:
            state[table] = con.execute(
                f"""SELECT l.path, r.* EXCLUDE (file_id)
                    FROM {table} r JOIN ledger l USING (file_id)
                    ORDER BY ALL"""
            ).fetchall()
        state["rejects"] = con.execute(
            "SELECT * EXCLUDE (file_id) FROM rejects ORDER BY ALL"
        ).fetchall()
        state["row_flags"] = con.execute(
            "SELECT * EXCLUDE (file_id) FROM row_flags ORDER BY ALL"
        ).fetchall()
    finally:
        con.close()
    return state


def test_workers_land_same_records(tmp_path: Path) -> None:
    states, orders = {}, {}
    for workers in (1, 3):
        settings = Settings(
            data_dir=tmp_path / f"workers-{workers}", ingest_workers=workers
        )
        deliver_mixed(settings.incoming_dir)
        report = ingest_all(settings)
        orders[workers] = [result.rel_path for result in report.results]
        states[workers] = landed_state(settings)
    # The report lists files in delivery order, whichever worker landed them.
    assert orders[1] == orders[3]
    sequential, parallel = states[1], states[3]
    assert sequential["ledger"] == parallel["ledger"]
    for table in RECORD_TABLES:
        assert sequential[table] == parallel[table], table
    assert sequential["rejects"] == parallel["rejects"]
    assert sequential["row_flags"] == parallel["row_flags"]
    statuses = {row[0]: row[1] for row in parallel["ledger"]}
    assert statuses["weibin/20181016_penalty.csv"] == "duplicate"
    assert statuses["hongqi/20181015_penalty.csv"] == "landed"
    assert len(parallel["rec_penalty"]) == 4 * 400 + 2


def test_workers_leave_no_transcoded_copies(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", ingest_workers=2)
    deliver_mixed(settings.incoming_dir)
    ingest_all(settings)
    assert list(settings.temp_dir.glob("transcoded-*")) == []


def test_run_removes_transcoded_leftover(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", ingest_workers=2)
    deliver_mixed(settings.incoming_dir)
    settings.temp_dir.mkdir(parents=True)
    # The partial copy a killed run leaves, named by a thread that no longer exists.
    leftover = settings.temp_dir / "transcoded-99599960df20b7bb-1.csv"
    leftover.write_bytes(b"h\n")
    ingest_all(settings)
    assert not leftover.exists()


def test_worker_error_stops_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_dir=tmp_path / "data", ingest_workers=2)
    deliver_mixed(settings.incoming_dir)
    real_ingest_file = ingest.ingest_file
    started: list[str] = []

    def failing(con, settings, delivery, hashed=None):
        started.append(delivery.rel_path)
        if len(started) == 3:
            raise OSError("disk full")
        return real_ingest_file(con, settings, delivery, hashed)

    monkeypatch.setattr(ingest, "ingest_file", failing)
    con = connect(settings)
    try:
        with pytest.raises(OSError, match="disk full"):
            ingest_incoming(con, settings)
        landed = con.execute("SELECT count(*) FROM ledger").fetchone()[0]
    finally:
        con.close()
    # The other worker finished the file it had started and took no further one.
    assert landed == len(started) - 1
    assert len(started) <= 4
    # Nothing that was not landed is lost: the next run lands the rest once.
    monkeypatch.setattr(ingest, "ingest_file", real_ingest_file)
    ingest_all(settings)
    reference = Settings(data_dir=tmp_path / "reference", ingest_workers=1)
    deliver_mixed(reference.incoming_dir)
    ingest_all(reference)
    resumed, expected = landed_state(settings), landed_state(reference)
    for table in RECORD_TABLES:
        assert resumed[table] == expected[table], table


# ------------------------------------------------------------------------------ queue


def make_delivery(
    tmp_path: Path, unit_id: str, day: int, category: str, extension: str, size: int
) -> Delivery:
    path = tmp_path / unit_id / f"201810{day:02d}_{category}{extension}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"a,b\n1,2\n")
    return Delivery(
        path=path,
        rel_path=f"{unit_id}/{path.name}",
        unit_id=unit_id,
        received_date=dt.date(2018, 10, day),
        category=category,
        extension=extension,
        size_bytes=size,
        mtime=0.0,
    )


def drive_queue(pending: list[Delivery], workers: int) -> list[tuple[str, int, str]]:
    """Take and finish every file from ``workers`` threads, and return the events."""
    events: list[tuple[str, int, str]] = []
    lock = threading.Lock()
    with ThreadPoolExecutor(max_workers=1) as hasher:
        queue = ingest._FileQueue(pending, hasher, look_ahead=workers + 1)

        def work() -> None:
            while (taken := queue.take()) is not None:
                index, hashed = taken
                assert hashed.result().size_bytes == 8
                with lock:
                    events.append(("start", index, threading.current_thread().name))
                time.sleep(0.01)
                with lock:
                    events.append(("end", index, threading.current_thread().name))
                queue.done(index)

        threads = [threading.Thread(target=work, name=f"w{n}") for n in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    return events


def overlapping(events: list[tuple[str, int, str]]) -> list[set[int]]:
    """Return, at each start, the set of files running."""
    running: set[int] = set()
    seen = []
    for kind, index, _ in events:
        if kind == "start":
            running.add(index)
            seen.append(set(running))
        else:
            running.discard(index)
    return seen


def test_queue_keeps_lanes_in_order(tmp_path: Path) -> None:
    pending = [
        make_delivery(tmp_path, unit, day, category, ".csv", 100 + day)
        for unit in ("a", "b", "c")
        for category in ("penalty", "license")
        for day in (1, 2, 3)
    ]
    events = drive_queue(pending, workers=3)
    starts = [index for kind, index, _ in events if kind == "start"]
    assert sorted(starts) == list(range(len(pending)))
    for running in overlapping(events):
        lanes = [(pending[i].unit_id, pending[i].category) for i in running]
        assert len(lanes) == len(set(lanes))
    for unit in ("a", "b", "c"):
        for category in ("penalty", "license"):
            lane = [
                i
                for i in starts
                if (pending[i].unit_id, pending[i].category) == (unit, category)
            ]
            assert lane == sorted(lane)
    assert max(len(running) for running in overlapping(events)) >= 2


def test_queue_starts_largest_lane_first(tmp_path: Path) -> None:
    pending = [
        make_delivery(tmp_path, "a", 1, "penalty", ".csv", 10),
        make_delivery(tmp_path, "b", 1, "other", ".csv", 5_000),
        make_delivery(tmp_path, "b", 2, "other", ".csv", 5_000),
        make_delivery(tmp_path, "c", 1, "license", ".csv", 20),
    ]
    events = drive_queue(pending, workers=1)
    starts = [index for kind, index, _ in events if kind == "start"]
    assert starts == [1, 2, 3, 0]


@pytest.mark.parametrize(
    ("extension", "size"),
    [(".xlsx", ALONE_XLSX_BYTES + 1), (".csv", ALONE_CSV_BYTES + 1)],
)
def test_queue_lands_large_file_alone(
    tmp_path: Path, extension: str, size: int
) -> None:
    pending = [
        make_delivery(tmp_path, unit, day, "penalty", ".csv", 1_000)
        for unit in ("a", "b", "c")
        for day in (1, 2, 3)
    ]
    pending.insert(4, make_delivery(tmp_path, "d", 1, "other", extension, size))
    pending.append(make_delivery(tmp_path, "e", 1, "other", ".xlsx", 20_000))
    events = drive_queue(pending, workers=3)
    large = 4
    for running in overlapping(events):
        if large in running:
            assert running == {large}
    # The small files, the small workbook among them, still land side by side.
    assert max(len(running) for running in overlapping(events)) >= 2
    starts = sorted(index for kind, index, _ in events if kind == "start")
    assert starts == list(range(len(pending)))


def test_settings_reject_zero_workers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from credit_etl.settings import load_settings

    monkeypatch.setenv("CREDIT_ETL_INGEST_WORKERS", "0")
    with pytest.raises(ValueError, match="CREDIT_ETL_INGEST_WORKERS"):
        load_settings(tmp_path)
    monkeypatch.setenv("CREDIT_ETL_INGEST_WORKERS", "²")
    with pytest.raises(ValueError, match="CREDIT_ETL_INGEST_WORKERS"):
        load_settings(tmp_path)
    monkeypatch.setenv("CREDIT_ETL_INGEST_WORKERS", "")
    assert load_settings(tmp_path).ingest_workers == 2
    monkeypatch.setenv("CREDIT_ETL_INGEST_WORKERS", "3")
    assert load_settings(tmp_path).ingest_workers == 3
