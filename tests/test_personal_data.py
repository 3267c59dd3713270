"""Natural persons' names and ID numbers stay in the warehouse.

Files holding natural persons (subject type 自然人, ID numbers, names, legal
representatives) go through the Dagster jobs in an ephemeral instance. The tests then
search each output for every delivered full name and full ID number, including those of
rejected rows and of a rejected file. The outputs are Python logging, the Dagster event
log, asset materialization metadata, annex and feedback workbooks and the command line.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb
import openpyxl
import pytest
from conftest import (
    CASES_DIR,
    CASES_MISSING_REASON,
    RECORD_TABLES,
    SETTLED_AGE_SECONDS,
    copy_case_files,
    csv_bytes,
    make_id,
    make_uscc,
    set_mtime,
    wrong_check,
    xlsx_bytes,
)

from assets.definitions import INGEST_JOB, REPORT_JOB, build_definitions
from credit_etl.feedback import feedback_rows
from credit_etl.ingest import ingest_incoming
from credit_etl.periods import Quarter
from credit_etl.settings import REPO_ROOT, Settings

pytestmark = pytest.mark.skipif(not CASES_DIR.is_dir(), reason=CASES_MISSING_REASON)

CLI = REPO_ROOT / ".venv" / "bin" / "credit-etl"
QUARTER = Quarter(2018, 4)
PARTITION_KEY = "2018-10-01"
CASES = ("07-every-rejection-kind", "05-xlsx-id-number-as-number")


# Natural persons of the two cases: every name, and each ID number delivered as text
# in full. Excel had already cut the IDs that case 05 stored as numbers.
CASE_PERSONS = {
    "何兰洋": "410702199807199355",
    "邹秀芳": "410702196411142305",
    "顾刚红": "410702199002301236",
    "许娜超": "410702198504128811",
    "朱霞华": None,
    "赵涛东": None,
    "邱雨鹏": "41070319901203270X",
    "沈怡玉": "410704680721315",
    "王芳伟": None,
    "侯霞红": "410782197608286520",
}

# Natural persons of the files written below.
PERSONS = {
    "冯宝宝": make_id("41070219850312123"),
    "任盈盈": make_id("41070319921105678"),
    "令狐冲": wrong_check(make_id("41071119790228456")),
    "岳灵珊": "410711199502301234",
    "张无忌": make_id("41071119700101001"),
    "周芷若": make_id("41072119880808002"),
    "赵敏敏": make_id("41072119900909003"),
    "殷素素": make_id("41078219751212004"),
    "杨不悔": "410721860303005",
    "宋青书": make_id("41070319830405006"),
}

PENALTY_HEADER = [
    "行政相对人名称",
    "行政相对人类别",
    "统一社会信用代码",
    "证件号码",
    "法定代表人",
    "法定代表人证件号码",
    "行政处罚决定书文号",
    "处罚内容",
    "罚款金额（万元）",
    "处罚决定日期",
]
PERSON = "自然人"
BUSINESS = "个体工商户"
# fmt: off
PENALTY_ROWS = [
    # Landed on time, landed late, and rejected for a check digit and a birth date.
    ["冯宝宝", PERSON, "", PERSONS["冯宝宝"], "", "", "新环罚〔2018〕801号", "罚款", "0.1", "2018-10-18"],
    ["任盈盈", PERSON, "", PERSONS["任盈盈"], "", "", "新环罚〔2018〕802号", "罚款", "0.1", "2018-10-02"],
    ["令狐冲", PERSON, "", PERSONS["令狐冲"], "", "", "新环罚〔2018〕803号", "罚款", "0.1", "2018-10-18"],
    ["岳灵珊", PERSON, "", PERSONS["岳灵珊"], "", "", "新环罚〔2018〕804号", "罚款", "0.1", "2018-10-18"],
    # An individual business with its owner as legal representative, published late.
    ["新乡市牧野区张记小吃店", BUSINESS, make_uscc(1, "92410700"), "", "张无忌", PERSONS["张无忌"], "新环罚〔2018〕805号", "罚款", "0.5", "2018-10-01"],
    # A person whose fine cannot be read: the row is rejected for the amount.
    ["宋青书", PERSON, "", PERSONS["宋青书"], "", "", "新环罚〔2018〕806号", "罚款", "待定", "2018-10-18"],
]
# fmt: on

LICENSE_HEADER = [
    "行政相对人名称",
    "行政相对人类别",
    "证件号码",
    "行政许可决定文书号",
    "许可决定日期",
]
# fmt: off
LICENSE_ROWS = [
    ["周芷若", PERSON, PERSONS["周芷若"], "卫许〔2018〕1号", "2018-10-09"],
    ["杨不悔", PERSON, PERSONS["杨不悔"], "卫许〔2018〕2号", "2018-10-01"],
    ["殷素素", PERSON, wrong_check(PERSONS["殷素素"]), "卫许〔2018〕3号", "2018-10-09"],
]
# fmt: on

BLACK_LIST_HEADER = ["主体名称", "证件号码", "名单名称", "认定部门", "列入日期"]
BLACK_LIST_ROWS = [
    ["赵敏敏", PERSONS["赵敏敏"], "失信被执行人", "新乡市中级人民法院", "2018-10-10"],
]

# A file without its header row: its first record is read as the header.
# fmt: off
HEADERLESS_ROWS = [
    ["宋青书", PERSON, "", PERSONS["宋青书"], "", "", "新环罚〔2018〕901号", "罚款", "0.1", "2018-10-18"],
]
# fmt: on

ALL_PERSONS = {**CASE_PERSONS, **PERSONS}
SECRETS = [*ALL_PERSONS, *filter(None, ALL_PERSONS.values())]


def deliver_files(settings: Settings) -> None:
    for case in CASES:
        copy_case_files(
            CASES_DIR / case / "incoming", settings.incoming_dir, SETTLED_AGE_SECONDS
        )
    files = {
        "environment/20181020_penalty.csv": csv_bytes(PENALTY_HEADER, PENALTY_ROWS),
        "weibin/20181015_行政许可.xlsx": xlsx_bytes(
            LICENSE_HEADER, LICENSE_ROWS, title_rows=["2018年10月行政许可信息"]
        ),
        "tax/20181016_black_list.csv": csv_bytes(BLACK_LIST_HEADER, BLACK_LIST_ROWS),
        "muye/20181021_penalty.csv": csv_bytes(HEADERLESS_ROWS[0], HEADERLESS_ROWS[1:]),
    }
    for rel_path, data in files.items():
        path = settings.incoming_dir / rel_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        set_mtime(path)


def leaks_in(texts: dict[str, str]) -> list[str]:
    """Return "where: secret" for each delivered name or ID found in the texts."""
    found = []
    for where, text in texts.items():
        for secret in SECRETS:
            if secret in text:
                found.append(f"{where}: {secret}")
    return found


def workbook_texts(path: Path) -> dict[str, str]:
    texts = {}
    workbook = openpyxl.load_workbook(path)
    for worksheet in workbook:
        for row in worksheet.iter_rows():
            for cell in row:
                if cell.value is not None:
                    where = f"{path.name}!{worksheet.title}!{cell.coordinate}"
                    texts[where] = str(cell.value)
    return texts


class RecordList(logging.Handler):
    """Log handler that stores every record, like pytest's caplog, across a module."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class PersonalRun:
    settings: Settings
    ingest_ok: bool
    report_ok: bool
    log_records: list[logging.LogRecord]
    event_messages: dict[str, str]
    metadata: dict[str, str]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CREDIT_ETL_")}


@pytest.fixture(scope="module")
def personal_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PersonalRun]:
    """Run both jobs over the delivered files and collect every output surface."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("personal") / "data")
    settings.ensure_dirs()
    deliver_files(settings)
    handler = RecordList()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name in [k for k in os.environ if k.startswith("CREDIT_ETL_")]:
                patch.delenv(name)
            definitions = build_definitions(settings)
            with dg.DagsterInstance.ephemeral() as instance:
                ingest = definitions.resolve_job_def(INGEST_JOB).execute_in_process(
                    instance=instance, raise_on_error=False
                )
                report = definitions.resolve_job_def(REPORT_JOB).execute_in_process(
                    instance=instance,
                    partition_key=PARTITION_KEY,
                    raise_on_error=False,
                )
                events = {}
                for result in (ingest, report):
                    for index, entry in enumerate(instance.all_logs(result.run_id)):
                        texts = [entry.user_message or "", entry.message or ""]
                        if entry.dagster_event is not None:
                            texts.append(entry.dagster_event.message or "")
                        events[f"{result.run_id[:8]} event {index}"] = "\n".join(texts)
                metadata = {}
                graph = definitions.resolve_asset_graph()
                for key in graph.get_all_asset_keys():
                    event = instance.get_latest_materialization_event(key)
                    if event is None or event.asset_materialization is None:
                        continue
                    for name, value in event.asset_materialization.metadata.items():
                        where = f"{key.to_user_string()}.{name}"
                        metadata[where] = str(getattr(value, "value", value))
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    yield PersonalRun(
        settings=settings,
        ingest_ok=ingest.success,
        report_ok=report.success,
        log_records=handler.records,
        event_messages=events,
        metadata=metadata,
    )


def test_jobs_succeed(personal_run: PersonalRun) -> None:
    assert personal_run.ingest_ok
    assert personal_run.report_ok


def test_warehouse_holds_persons(personal_run: PersonalRun) -> None:
    # The search below is only meaningful if the values were delivered and landed.
    con = duckdb.connect(str(personal_run.settings.warehouse_path), read_only=True)
    try:
        stored = set()
        for table in RECORD_TABLES:
            for name, number in con.execute(
                f"SELECT subject_name, id_number FROM {table}"
            ).fetchall():
                stored.update(v for v in (name, number) if v)
        legal = con.execute(
            "SELECT legal_representative, legal_representative_id_number "
            "FROM rec_penalty WHERE legal_representative IS NOT NULL"
        ).fetchall()
    finally:
        con.close()
    for name in ("冯宝宝", "任盈盈", "周芷若", "杨不悔", "赵敏敏", "许娜超"):
        assert name in stored
    for name in ("冯宝宝", "周芷若", "杨不悔", "赵敏敏"):
        assert PERSONS[name] in stored
    assert legal == [("张无忌", PERSONS["张无忌"])]


def test_python_log_masked(personal_run: PersonalRun) -> None:
    assert personal_run.log_records
    texts = {
        f"{record.name} {record.levelname} #{index}": record.getMessage()
        for index, record in enumerate(personal_run.log_records)
    }
    leaks = leaks_in(texts)
    assert not leaks, "\n".join(leaks)


def test_event_log_masked(personal_run: PersonalRun) -> None:
    assert personal_run.event_messages
    leaks = leaks_in(personal_run.event_messages)
    assert not leaks, "\n".join(leaks)


def test_metadata_masked(personal_run: PersonalRun) -> None:
    assert "landed_extracts.preview" in personal_run.metadata
    leaks = leaks_in(personal_run.metadata)
    assert not leaks, "\n".join(leaks)


def test_metadata_preview_masks_person(personal_run: PersonalRun) -> None:
    # The preview shows rows of the last penalty file landed, whose persons are
    # shown by surname and by the ends of their ID numbers.
    preview = personal_run.metadata["landed_extracts.preview"]
    assert re.search(r"\| [\u4e00-\u9fff]\*\* \| 自然人 \|", preview)
    assert re.search(r"\| 410\d{3}\*{8}\d{3}[\dX] \|", preview)


def test_annexes_masked(personal_run: PersonalRun) -> None:
    folder = personal_run.settings.exports_dir / QUARTER.label
    paths = sorted(folder.glob("annex*.xlsx"))
    assert len(paths) == 4
    texts = {}
    for path in paths:
        texts.update(workbook_texts(path))
    leaks = leaks_in(texts)
    assert not leaks, "\n".join(leaks)


def test_feedback_workbooks_masked(personal_run: PersonalRun) -> None:
    folder = personal_run.settings.exports_dir / QUARTER.label / "feedback"
    paths = sorted(folder.glob("*.xlsx"))
    assert len(paths) > 4
    texts = {}
    for path in paths:
        texts.update(workbook_texts(path))
    leaks = leaks_in(texts)
    assert not leaks, "\n".join(leaks)


def test_feedback_lists_persons_masked(personal_run: PersonalRun) -> None:
    # The search above passes trivially if the persons' rows are missing.
    folder = personal_run.settings.exports_dir / QUARTER.label / "feedback"
    environment = "\n".join(workbook_texts(folder / "environment.xlsx").values())
    weibin = "\n".join(workbook_texts(folder / "weibin.xlsx").values())
    assert "任**" in environment
    assert PERSONS["任盈盈"][:6] + "*" * 8 + PERSONS["任盈盈"][-4:] in environment
    assert PERSONS["令狐冲"][:6] + "*" * 8 + PERSONS["令狐冲"][-4:] in environment
    assert "杨**" in weibin
    assert PERSONS["杨不悔"][:6] + "*" * 5 + PERSONS["杨不悔"][-4:] in weibin


def test_cli_files_masked(personal_run: PersonalRun) -> None:
    result = subprocess.run(
        [
            str(CLI),
            "files",
            "--json",
            "--data-dir",
            str(personal_run.settings.data_dir),
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") >= 8
    texts = {"stdout": result.stdout, "stderr": result.stderr}
    leaks = leaks_in(texts)
    assert not leaks, "\n".join(leaks)


def test_cli_ingest_masked(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    deliver_files(settings)
    result = subprocess.run(
        [str(CLI), "-v", "ingest", "--data-dir", str(settings.data_dir)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "landed" in result.stdout
    texts = {"stdout": result.stdout, "stderr": result.stderr}
    leaks = leaks_in(texts)
    assert not leaks, "\n".join(leaks)


# --------------------------------------------------------------------------- smallest cases


PERSON_HEADER = [
    "行政相对人名称",
    "行政相对人类别",
    "证件号码",
    "行政处罚决定书文号",
    "处罚决定日期",
]


def test_headerless_file_log_masked(
    settings: Settings, warehouse, deliver, caplog: pytest.LogCaptureFixture
) -> None:
    row = ["冯宝宝", PERSON, PERSONS["冯宝宝"], "新环罚〔2018〕801号", "2018-10-18"]
    deliver("environment/20181020_penalty.csv", csv_bytes(row, []))
    caplog.set_level(logging.DEBUG)
    report = ingest_incoming(warehouse, settings)
    assert [r.status for r in report.results] == ["failed"]
    texts = {f"log #{i}": r.getMessage() for i, r in enumerate(caplog.records)}
    texts["error"] = report.results[0].error
    assert "冯宝宝" not in "\n".join(texts.values())
    assert PERSONS["冯宝宝"] not in "\n".join(texts.values())


def test_reject_reason_masks_short_id(
    settings: Settings, warehouse, write_extract
) -> None:
    # An ID number missing its check digit: the 17 digits give the full number away,
    # since the check digit follows from them.
    short_id = PERSONS["冯宝宝"][:17]
    write_extract(
        "environment/20181020_penalty.csv",
        PERSON_HEADER,
        [["冯宝宝", PERSON, short_id, "新环罚〔2018〕801号", "2018-10-18"]],
    )
    ingest_incoming(warehouse, settings)
    [row] = feedback_rows(warehouse, settings, QUARTER, "environment")["rejects"]
    value, reason = row[4], row[5]
    assert short_id not in value
    assert short_id not in reason
