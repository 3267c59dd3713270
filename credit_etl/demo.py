"""Demo extracts whose figures reproduce the 2018 bulletin where it is consistent.

``write_demo_data`` writes, for every selected unit, the records that
``bulletin.derive_targets`` derived from the bulletin, as extract files that follow the
delivery contract: ``incoming/<unit_id>/<YYYYMMDD>_<category>.csv``, where the date in
the name is the received date of every record in the file. Next to the incoming folder
it writes ``demo/inconsistent_cells.csv`` (the printed cells no records can produce)
and ``demo/expected_annexes.json`` (every annex cell the written records must give).

Bulk files are written by DuckDB straight from ``range()``, so memory stays flat and
no Python loop runs per row. Subject identifiers are computed in SQL with the
GB 32100-2015 and GB 11643-1999 check characters. A few small files are written the way
clerks deliver them: GB18030 CSV without a byte-order mark, and XLSX with a title row
above the header.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import math
import os
import random
import re
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import duckdb
import openpyxl
from openpyxl.styles import Alignment, Font

from credit_etl.bulletin import (
    COMMITMENT_TYPE_ORDER,
    OUTSIDE_2018,
    PERIODS,
    BulletinTargets,
    UnitAtoms,
    apportion,
    derive_targets,
    expected_annexes,
)
from credit_etl.identifiers import ID_CHECK, ID_WEIGHTS, USCC_ALPHABET, USCC_WEIGHTS
from credit_etl.registry import Unit, load_units
from credit_etl.schema import CATEGORY_ZH

logger = logging.getLogger(__name__)

MAX_FILE_ROWS = 2_000_000
# Files up to this many rows may be written as GB18030 CSV or as XLSX.
SMALL_FILE_ROWS = 1_000
GB18030_SHARE = 0.10
XLSX_SHARE = 0.10
DUCKDB_MEMORY_LIMIT = "1GB"
CATEGORY_ORDER = ("license", "penalty", "red_list", "black_list", "commitment", "other")
# Periods in the order their records are numbered: 2017 first, then 2018Q1..Q4.
NUMBERING_ORDER = (OUTSIDE_2018, 0, 1, 2, 3)
# Timely records were received 0-7 days after the decision, late ones 8-40 days.
TIMELY_MAX_DAYS = 7
LATE_EXTRA_DAYS = 33

USCC_PREFIXES = ("91410700MA", "92410700MA")  # enterprise, individual business
USCC_SERIAL_DIGITS = 7
# Multipliers coprime with 10, so that k -> (k * M + c) mod 10^d is a bijection.
USCC_SERIAL_MULTIPLIER = 3_162_277
BIRTH_DAY_MULTIPLIER = 7_919
ID_REGIONS = (
    410702, 410703, 410704, 410711, 410721, 410724,
    410725, 410726, 410727, 410781, 410782,
)  # fmt: skip
SURNAMES = "王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗梁宋郑谢韩唐冯于董萧"
GIVEN_CHARS = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰红梅建国志文斌海波"
ORG_WORDS = (
    "华信", "中原", "牧野", "卫河", "太行", "新科", "宏达", "鑫源", "盛世", "金穗",
    "瑞丰", "同德", "长垣", "平安", "天成", "博远", "恒通", "润泽", "嘉禾", "安泰",
)  # fmt: skip
ORG_SUFFIXES = (
    "商贸有限公司", "食品有限公司", "建筑工程有限公司", "机械制造有限公司",
    "农业专业合作社", "餐饮店", "物流有限公司", "医药连锁有限公司",
)  # fmt: skip
# One record in N of a category has a natural person as its subject; red/black-list
# subjects are always organisations.
PERSON_EVERY = {"license": 5, "penalty": 3, "commitment": 10, "other": 2}
NO_PERSONS = 10**15
# Information type of ``other`` records of the units that deliver most of them.
OTHER_INFO_TYPES = {
    "hrss": "社会保险参保缴费记录",
    "housing_fund": "住房公积金缴存记录",
    "public_security": "户籍及出入境管理记录",
    "china_mobile": "通信缴费记录",
    "china_telecom": "通信缴费记录",
    "china_unicom": "通信缴费记录",
    "tax": "纳税信用评价记录",
    "capital_water": "水费缴纳记录",
    "huadian_heat": "供热缴费记录",
    "xinao_gas": "燃气缴费记录",
    "state_grid": "电费缴纳记录",
    "education": "教育机构信用记录",
}
DEFAULT_INFO_TYPE = "其他信用信息"
_CORE_TIMES = re.compile(r"(<dcterms:(?:created|modified)[^>]*>)[^<]*(</dcterms:)")


@dataclass(frozen=True)
class DemoFile:
    """One written extract file."""

    path: Path
    unit_id: str
    category: str
    received: dt.date
    rows: int
    file_format: str  # "csv" (UTF-8), "csv-gb18030" or "xlsx"


@dataclass(frozen=True)
class DemoSummary:
    """Files, record counts and demo-folder paths written by ``write_demo_data``."""

    incoming_dir: Path
    demo_dir: Path
    inconsistent_cells_path: Path
    expected_annexes_path: Path
    scale: float
    seed: int
    files: tuple[DemoFile, ...]
    records: dict[str, dict[str, int]]  # unit id -> category -> records written
    seconds: float

    @property
    def total_records(self) -> int:
        return sum(sum(by_category.values()) for by_category in self.records.values())


@dataclass(frozen=True)
class _FilePlan:
    """One file to write: a slice [start, start + rows) of a category's numbering."""

    unit: Unit
    category: str
    period: int
    received: dt.date
    start: int
    rows: int
    period_start: int
    file_format: str
    name: str
    # Licence and penalty files: where this category starts among the period's
    # double-publicity records, how many there are and how many are timely.
    dp_offset: int = 0
    dp_records: int = 0
    dp_timely: int = 0
    # Commitment files: cumulative record counts per type within the period.
    type_bounds: tuple[int, ...] = ()


def write_demo_data(
    incoming_dir: Path,
    *,
    scale: float = 1.0,
    units: Sequence[str] | None = None,
    seed: int = 2018,
) -> DemoSummary:
    """Write demo extracts for the selected units and the demo folder beside them.

    Every record count of ``bulletin.derive_targets`` is multiplied by ``scale`` and
    rounded half up, so at scale 1 the figures are the bulletin's except for the cells
    listed in ``inconsistent_cells.csv``. ``units`` selects unit ids (None writes all).
    Raises FileExistsError when a selected unit's folder already contains files,
    because re-writing a delivered file would be a new delivery.
    """
    if not scale > 0:
        raise ValueError(f"scale must be greater than 0, got {scale}")
    started = time.perf_counter()
    registry = load_units()
    selected = _select_units(registry, units)
    incoming_dir = Path(incoming_dir)
    for unit in selected:
        folder = incoming_dir / unit.unit_id
        if folder.exists() and any(folder.iterdir()):
            raise FileExistsError(
                f"{folder} already contains files; write demo data into an empty "
                "incoming folder"
            )

    targets = derive_targets(units=registry)
    atoms = {
        unit.unit_id: targets.atoms[unit.unit_id].scaled(scale) for unit in selected
    }

    files: list[DemoFile] = []
    records: dict[str, dict[str, int]] = {}
    with duckdb.connect() as con:
        con.execute("SET memory_limit = ?", [DUCKDB_MEMORY_LIMIT])
        _create_macros(con)
        for unit in selected:
            plans = _plan_unit_files(unit, atoms[unit.unit_id], incoming_dir, seed)
            folder = incoming_dir / unit.unit_id
            folder.mkdir(parents=True, exist_ok=True)
            for plan in plans:
                files.append(_write_file(con, plan, folder, seed))
            records[unit.unit_id] = _records_by_category(atoms[unit.unit_id])
            logger.info(
                "wrote %d files with %d records for %s",
                len(plans),
                sum(records[unit.unit_id].values()),
                unit.unit_id,
            )

    demo_dir = incoming_dir.parent / "demo"
    cells_path, expected_path = _write_demo_folder(demo_dir, targets, atoms, registry)
    seconds = time.perf_counter() - started
    summary = DemoSummary(
        incoming_dir=incoming_dir,
        demo_dir=demo_dir,
        inconsistent_cells_path=cells_path,
        expected_annexes_path=expected_path,
        scale=scale,
        seed=seed,
        files=tuple(files),
        records=records,
        seconds=seconds,
    )
    logger.info(
        "wrote %d demo files with %d records for %d units at scale %s in %.1f s",
        len(files),
        summary.total_records,
        len(selected),
        scale,
        seconds,
    )
    return summary


def _select_units(registry: list[Unit], unit_ids: Sequence[str] | None) -> list[Unit]:
    if unit_ids is None:
        return registry
    known = {unit.unit_id for unit in registry}
    unknown = sorted(set(unit_ids) - known)
    if unknown:
        raise ValueError(
            f"unknown unit ids {unknown}; use unit_id values of data/units.csv"
        )
    selected_ids = set(unit_ids)
    return [unit for unit in registry if unit.unit_id in selected_ids]


def _records_by_category(atoms: UnitAtoms) -> dict[str, int]:
    counts = {category: atoms.total(category) for category in atoms.counts}
    counts["commitment"] = sum(sum(values) for values in atoms.commitments.values())
    return {category: counts[category] for category in CATEGORY_ORDER}


# ---------------------------------------------------------------- planning


def _plan_unit_files(
    unit: Unit, atoms: UnitAtoms, incoming_dir: Path, seed: int
) -> list[_FilePlan]:
    """Split each category's records of each period into dated files."""
    rng = random.Random(f"{seed}:{unit.unit_id}")
    used_names: set[str] = set()
    plans: list[_FilePlan] = []
    for category in CATEGORY_ORDER:
        numbered = 0
        for period in NUMBERING_ORDER:
            count = _period_count(atoms, category, period)
            if count == 0:
                continue
            extra = _period_extras(atoms, category, period)
            plans += _plan_period(
                unit, category, period, numbered, count, extra, rng, used_names
            )
            numbered += count
    return plans


def _period_count(atoms: UnitAtoms, category: str, period: int) -> int:
    if category == "commitment":
        return sum(values[period] for values in atoms.commitments.values())
    return atoms.counts[category][period]


def _period_extras(atoms: UnitAtoms, category: str, period: int) -> dict[str, object]:
    if category in ("license", "penalty"):
        dp_offset = atoms.counts["license"][period] if category == "penalty" else 0
        return {
            "dp_offset": dp_offset,
            "dp_records": atoms.double_publicity(period),
            "dp_timely": atoms.timely[period],
        }
    if category == "commitment":
        bounds: list[int] = []
        running = 0
        for kind in COMMITMENT_TYPE_ORDER:
            running += atoms.commitments.get(kind, (0,) * len(PERIODS))[period]
            bounds.append(running)
        return {"type_bounds": tuple(bounds)}
    return {}


def _file_count(rows: int) -> int:
    """Return how many files carry one period's records of a category."""
    if rows < 50:
        files = 1
    elif rows < 5_000:
        files = 2
    else:
        files = 3
    return max(files, math.ceil(rows / MAX_FILE_ROWS))


def _plan_period(
    unit: Unit,
    category: str,
    period: int,
    numbered: int,
    count: int,
    extra: Mapping[str, object],
    rng: random.Random,
    used_names: set[str],
) -> list[_FilePlan]:
    first, last = PERIODS[period]
    days = (last - first).days + 1
    files = _file_count(count)
    if files <= days:
        offsets = sorted(rng.sample(range(days), files))
    else:
        offsets = sorted(rng.choices(range(days), k=files))
    plans = []
    start = numbered
    for offset, rows in zip(offsets, apportion(count, [1] * files), strict=True):
        received = first + dt.timedelta(days=offset)
        file_format = _choose_format(rows, rng)
        name = _file_name(received, category, file_format, used_names)
        plans.append(
            _FilePlan(
                unit=unit,
                category=category,
                period=period,
                received=received,
                start=start,
                rows=rows,
                period_start=numbered,
                file_format=file_format,
                name=name,
                **extra,  # type: ignore[arg-type]
            )
        )
        start += rows
    return plans


def _choose_format(rows: int, rng: random.Random) -> str:
    draw = rng.random()
    if rows > SMALL_FILE_ROWS:
        return "csv"
    if draw < XLSX_SHARE:
        return "xlsx"
    if draw < XLSX_SHARE + GB18030_SHARE:
        return "csv-gb18030"
    return "csv"


def _file_name(
    received: dt.date, category: str, file_format: str, used_names: set[str]
) -> str:
    # A clerk saving from Chinese Excel often names the category in Chinese.
    word = CATEGORY_ZH[category] if file_format == "csv-gb18030" else category
    stem = f"{received:%Y%m%d}_{word}"
    candidate, number = stem, 1
    while candidate in used_names:
        number += 1
        candidate = f"{stem}_{number}"
    used_names.add(candidate)
    extension = ".xlsx" if file_format == "xlsx" else ".csv"
    return candidate + extension


# ---------------------------------------------------------------- SQL


def _digit_sum(value: str, digits: int, weights: Sequence[int]) -> str:
    """SQL for the weighted sum of the digits of an integer of ``digits`` digits."""
    return " + ".join(
        f"(({value} // {10 ** (digits - 1 - i)}) % 10) * {weight}"
        for i, weight in enumerate(weights)
    )


def _create_macros(con: duckdb.DuckDBPyConnection) -> None:
    """Create SQL macros that build valid identifiers from a record number."""
    prefix_sums = [
        sum(
            USCC_ALPHABET.index(char) * weight
            for char, weight in zip(prefix, USCC_WEIGHTS, strict=False)
        )
        for prefix in USCC_PREFIXES
    ]
    serial_weights = USCC_WEIGHTS[len(USCC_PREFIXES[0]) :]
    modulus = 10**USCC_SERIAL_DIGITS
    con.execute(
        f"""
        CREATE OR REPLACE TEMP MACRO demo_uscc_from(prefix, prefix_sum, serial) AS
            prefix || lpad(CAST(serial AS VARCHAR), {USCC_SERIAL_DIGITS}, '0')
            || substr(
                '{USCC_ALPHABET}',
                CAST((31 - (prefix_sum + {
            _digit_sum("serial", USCC_SERIAL_DIGITS, serial_weights)
        }) % 31) % 31 AS INTEGER) + 1,
                1
            )
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP MACRO demo_uscc(k) AS
            CASE WHEN k % 4 = 3
                THEN demo_uscc_from('{USCC_PREFIXES[1]}', {prefix_sums[1]},
                    (k * {USCC_SERIAL_MULTIPLIER} + 7) % {modulus})
                ELSE demo_uscc_from('{USCC_PREFIXES[0]}', {prefix_sums[0]},
                    (k * {USCC_SERIAL_MULTIPLIER} + 7) % {modulus})
            END
        """
    )
    regions = ", ".join(str(region) for region in ID_REGIONS)
    con.execute(
        f"""
        CREATE OR REPLACE TEMP MACRO demo_id_body(k) AS
            [{regions}][CAST(k % {len(ID_REGIONS)} AS INTEGER) + 1] * 100000000000
            + (
                year(DATE '1950-01-01' + CAST((k * {BIRTH_DAY_MULTIPLIER}) % 20000
                    AS INTEGER)) * 10000
                + month(DATE '1950-01-01' + CAST((k * {BIRTH_DAY_MULTIPLIER}) % 20000
                    AS INTEGER)) * 100
                + day(DATE '1950-01-01' + CAST((k * {BIRTH_DAY_MULTIPLIER}) % 20000
                    AS INTEGER))
            ) * 1000
            + (k // {len(ID_REGIONS)}) % 1000
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP MACRO demo_id_from(body) AS
            CAST(body AS VARCHAR)
            || substr('{ID_CHECK}',
                CAST(({_digit_sum("body", 17, ID_WEIGHTS)}) % 11 AS INTEGER) + 1, 1)
        """
    )


def _sql_list(values: Sequence[str]) -> str:
    """SQL list literal of constant strings (they never contain a quote)."""
    return "[" + ", ".join(f"'{value}'" for value in values) + "]"


def _pick(values: Sequence[str], index: str) -> str:
    return f"{_sql_list(values)}[CAST(({index}) % {len(values)} AS INTEGER) + 1]"


_PERSON_NAME = (
    f"{_pick(list(SURNAMES), 'n')} || {_pick(list(GIVEN_CHARS), 'n // 30')}"
    f" || CASE WHEN n % 3 = 0 THEN '' ELSE {_pick(list(GIVEN_CHARS), 'n // 7')} END"
)
_ORG_NAME = f"'新乡市' || {_pick(ORG_WORDS, 'n')} || {_pick(ORG_SUFFIXES, 'n // 20')}"

# In every file's rows, k numbers the unit's records of the category, so decision
# numbers, list keys, commitment codes and record ids built from it are unique.
# j numbers the records within the period. n is k shifted by the seed, and names and
# identifiers are built from it.
_BASE = """
    WITH numbered AS (
        SELECT range AS k, range - $period_start AS j, range + $seed_shift AS n
        FROM range($start, $stop)
    ),
    subjects AS (
        SELECT *, (k % $person_every = 0) AS person, demo_id_body(n) AS id_body
        FROM numbered
    )
"""

_SUBJECT_COLUMNS = f"""
    CASE WHEN person THEN {_PERSON_NAME} ELSE {_ORG_NAME} END AS "{{name}}",
    CASE WHEN person THEN '自然人' ELSE '法人及非法人组织' END AS "行政相对人类别",
    CASE WHEN person THEN NULL ELSE demo_uscc(n) END AS "统一社会信用代码",
    CASE WHEN person THEN '身份证' END AS "证件类型",
    CASE WHEN person THEN demo_id_from(id_body) END AS "证件号码"
"""

# The record at position c = j + dp_offset among the period's dp_records licence and
# penalty records is timely when floor(c * dp_timely / dp_records) steps up at c, so
# exactly dp_timely of them are timely, spread evenly.
_DECIDED = """
    , dated AS (
        SELECT *,
            CASE WHEN ((j + $dp_offset + 1) * $dp_timely) // $dp_records
                    > ((j + $dp_offset) * $dp_timely) // $dp_records
                THEN $received::DATE - CAST(k % ($timely_max + 1) AS INTEGER)
                ELSE $received::DATE - CAST($timely_max + 1 + (k * 13) % $late_extra
                    AS INTEGER)
            END AS decided
        FROM subjects
    )
"""

_LICENSE_SQL = (
    _BASE
    + _DECIDED
    + f"""
    SELECT
        {_SUBJECT_COLUMNS.format(name="行政相对人名称")},
        {
        _pick(
            (
                "食品经营许可证",
                "药品经营许可证",
                "建筑工程施工许可证",
                "排污许可证",
                "道路运输经营许可证",
            ),
            "k",
        )
    } AS "行政许可决定文书名称",
        '新' || $short_name || '许〔' || year(decided) || '〕'
            || lpad(CAST(k + 1 AS VARCHAR), 7, '0') || '号' AS "行政许可决定文书号",
        {_pick(("普通", "特许", "认可", "核准", "登记"), "k // 5")} AS "许可类别",
        {
        _pick(
            (
                "预包装食品销售, 散装食品销售",
                "药品零售",
                "房屋建筑工程施工",
                "排放大气污染物",
                "普通货运",
            ),
            "k",
        )
    } AS "许可内容",
        decided AS "许可决定日期",
        decided AS "有效期自",
        CAST(decided + INTERVAL 3 YEAR AS DATE) AS "有效期至",
        $unit_name AS "许可机关",
        $unit_name AS "数据来源单位"
    FROM dated
    """
)

_PENALTY_SQL = (
    _BASE
    + _DECIDED
    + f"""
    SELECT
        {_SUBJECT_COLUMNS.format(name="行政相对人名称")},
        '新' || $short_name || '罚决字〔' || year(decided) || '〕'
            || lpad(CAST(k + 1 AS VARCHAR), 7, '0') || '号' AS "行政处罚决定书文号",
        {
        _pick(
            ("无证经营", "超范围经营", "未按规定公示信息", "违规排放", "价格违法"), "k"
        )
    } AS "违法行为类型",
        {
        _pick(
            (
                "当事人未取得许可从事经营活动",
                "当事人超出核准范围经营",
                "当事人未按期报送年度报告",
            ),
            "k // 5",
        )
    } AS "违法事实",
        {
        _pick(
            (
                "《中华人民共和国行政许可法》",
                "《无证无照经营查处办法》",
                "《企业信息公示暂行条例》",
            ),
            "k // 5",
        )
    } AS "处罚依据",
        {_pick(("警告", "罚款", "没收违法所得", "责令停产停业"), "k // 3")}
            AS "处罚类别",
        {_pick(("警告并责令改正", "罚款并责令改正", "没收违法所得并处罚款"), "k")}
            AS "处罚内容",
        CAST(((k % 200) + 1) / 100 AS DECIMAL(9, 2)) AS "罚款金额（万元）",
        decided AS "处罚决定日期",
        $unit_name AS "处罚机关",
        $unit_name AS "数据来源单位"
    FROM dated
    """
)


def _list_sql(list_names: Sequence[str], reasons: Sequence[str]) -> str:
    return (
        _BASE
        + f"""
    SELECT
        {_ORG_NAME} AS "主体名称",
        demo_uscc(k + $seed_shift) AS "统一社会信用代码",
        {_pick(list_names, "k")} AS "名单名称",
        $received::DATE - CAST(k % 60 AS INTEGER) AS "认定日期",
        $unit_name AS "认定部门",
        {_pick(reasons, "k")} AS "列入名单事由",
        $unit_name AS "数据来源单位"
    FROM subjects
    """
    )


_RED_LIST_SQL = _list_sql(
    ("纳税信用A级纳税人名单", "守合同重信用企业名单"),
    ("连续三年纳税信用评价为A级", "被评为守合同重信用企业"),
)
_BLACK_LIST_SQL = _list_sql(
    ("重大税收违法案件当事人名单", "失信被执行人名单"),
    ("偷逃税款数额较大", "有履行能力而拒不履行生效法律文书确定的义务"),
)

_COMMITMENT_TYPE_CASE = (
    "CASE "
    + " ".join(
        f"WHEN j < $bound_{i} THEN '{kind}'"
        for i, kind in enumerate(COMMITMENT_TYPE_ORDER)
    )
    + " END"
)

_COMMITMENT_SQL = (
    _BASE
    + f"""
    SELECT
        {_SUBJECT_COLUMNS.format(name="承诺人名称")},
        'CN' || $code_prefix || lpad(CAST(k + 1 AS VARCHAR), 8, '0') AS "承诺编码",
        {_COMMITMENT_TYPE_CASE} AS "承诺类型",
        {_pick(("办理行政许可", "申请信用修复", "参加评先评优", "行业自律"), "k")}
            AS "承诺事由",
        '本单位承诺所提供材料真实有效，如有虚假愿承担相应责任' AS "承诺内容",
        $received::DATE - CAST(k % 20 AS INTEGER) AS "承诺作出日期",
        $unit_name AS "承诺受理单位"
    FROM subjects
    """
)

_OTHER_SQL = (
    _BASE
    + f"""
    SELECT
        $record_prefix || lpad(CAST(k + 1 AS VARCHAR), 10, '0') AS "记录编号",
        CASE WHEN person THEN {_PERSON_NAME} ELSE {_ORG_NAME} END AS "主体名称",
        CASE WHEN person THEN NULL ELSE demo_uscc(n) END AS "统一社会信用代码",
        CASE WHEN person THEN demo_id_from(id_body) END AS "证件号码",
        $info_type AS "信息类别",
        $received::DATE - CAST(k % 28 AS INTEGER) AS "信息日期"
    FROM subjects
    """
)

_CATEGORY_SQL = {
    "license": _LICENSE_SQL,
    "penalty": _PENALTY_SQL,
    "red_list": _RED_LIST_SQL,
    "black_list": _BLACK_LIST_SQL,
    "commitment": _COMMITMENT_SQL,
    "other": _OTHER_SQL,
}


def _short_name(unit: Unit) -> str:
    name = unit.name_zh.removeprefix("市").removeprefix("中国")
    return name[:2]


def _query_parameters(plan: _FilePlan, seed: int) -> dict[str, object]:
    unit = plan.unit
    parameters: dict[str, object] = {
        "start": plan.start,
        "stop": plan.start + plan.rows,
        "period_start": plan.period_start,
        # Another seed shifts n, and so gives other names and identifiers.
        "seed_shift": seed * 7_777_777,
        "person_every": PERSON_EVERY.get(plan.category, NO_PERSONS),
        "received": plan.received.isoformat(),
        "unit_name": unit.name_zh,
    }
    sql = _CATEGORY_SQL[plan.category]
    if plan.category in ("license", "penalty"):
        parameters.update(
            dp_offset=plan.dp_offset,
            dp_records=plan.dp_records,
            dp_timely=plan.dp_timely,
            timely_max=TIMELY_MAX_DAYS,
            late_extra=LATE_EXTRA_DAYS,
            short_name=_short_name(unit),
        )
    if plan.category == "commitment":
        parameters["code_prefix"] = unit.division_code or "410700"
        parameters.update(
            {f"bound_{i}": bound for i, bound in enumerate(plan.type_bounds)}
        )
    if plan.category == "other":
        parameters["record_prefix"] = unit.unit_id.upper() + "-"
        parameters["info_type"] = OTHER_INFO_TYPES.get(unit.unit_id, DEFAULT_INFO_TYPE)
    # Only parameters the query names may be bound.
    return {name: value for name, value in parameters.items() if f"${name}" in sql}


# ---------------------------------------------------------------- writing


def _write_file(
    con: duckdb.DuckDBPyConnection, plan: _FilePlan, folder: Path, seed: int
) -> DemoFile:
    path = folder / plan.name
    partial = path.with_name(path.name + ".part")
    sql = _CATEGORY_SQL[plan.category]
    parameters = _query_parameters(plan, seed)
    if plan.file_format == "xlsx":
        result = con.execute(sql, parameters)
        header = [column[0] for column in result.description]
        _write_xlsx(partial, plan, header, result.fetchall())
    else:
        target = str(partial).replace("'", "''")
        con.execute(
            f"COPY ({sql}) TO '{target}' (FORMAT CSV, HEADER, DELIMITER ',')",
            parameters,
        )
        if plan.file_format == "csv-gb18030":
            text = partial.read_text(encoding="utf-8")
            partial.write_bytes(text.encode("gb18030"))
    os.replace(partial, path)
    return DemoFile(
        path,
        plan.unit.unit_id,
        plan.category,
        plan.received,
        plan.rows,
        plan.file_format,
    )


def _write_xlsx(
    path: Path, plan: _FilePlan, header: Sequence[str], rows: Sequence[tuple]
) -> None:
    """Write a worksheet as units fill it in: a title row, the header in row 2."""
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = CATEGORY_ZH[plan.category]
    category = CATEGORY_ZH[plan.category]
    title = f"{plan.unit.name_zh}{category}信息报送表（{plan.received:%Y年%m月%d日}）"
    sheet.append([title])
    sheet.merge_cells(start_row=1, start_column=1, end_row=1, end_column=len(header))
    sheet.cell(row=1, column=1).font = Font(bold=True, size=14)
    sheet.cell(row=1, column=1).alignment = Alignment(horizontal="center")
    sheet.append(list(header))
    for row in rows:
        sheet.append(list(row))
    for column_cells in sheet.iter_cols(min_row=3):
        for cell in column_cells:
            if isinstance(cell.value, dt.date):
                cell.number_format = "yyyy-mm-dd"
    workbook.properties.creator = plan.unit.name_zh
    workbook.save(path)
    _pin_xlsx_timestamps(path, dt.datetime.combine(plan.received, dt.time(9, 0)))


def _pin_xlsx_timestamps(path: Path, when: dt.datetime) -> None:
    """Rewrite an XLSX with fixed document and zip times, so its bytes are repeatable.

    openpyxl stamps the save time into docProps/core.xml and into every zip entry.
    """
    stamp = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    with zipfile.ZipFile(path) as source:
        members = [(info, source.read(info)) for info in source.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
        for info, data in members:
            if info.filename == "docProps/core.xml":
                data = _CORE_TIMES.sub(rf"\g<1>{stamp}\g<2>", data.decode()).encode()
            pinned = zipfile.ZipInfo(info.filename, date_time=when.timetuple()[:6])
            pinned.compress_type = zipfile.ZIP_DEFLATED
            pinned.external_attr = info.external_attr
            target.writestr(pinned, data)


def _json_value(value: int | Decimal) -> int | float:
    return float(value) if isinstance(value, Decimal) else value


def _write_demo_folder(
    demo_dir: Path,
    targets: BulletinTargets,
    atoms: Mapping[str, UnitAtoms],
    registry: list[Unit],
) -> tuple[Path, Path]:
    demo_dir.mkdir(parents=True, exist_ok=True)
    cells_path = demo_dir / "inconsistent_cells.csv"
    with cells_path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["annex", "unit_name", "column", "printed", "producible", "reason"]
        )
        for cell in targets.inconsistent:
            writer.writerow(
                [
                    cell.annex,
                    cell.unit_name,
                    cell.column,
                    cell.printed,
                    cell.producible,
                    cell.reason,
                ]
            )
    expected = expected_annexes(atoms, registry)
    document = {
        str(annex): {
            name: {column: _json_value(value) for column, value in row.items()}
            for name, row in rows.items()
        }
        for annex, rows in expected.items()
    }
    expected_path = demo_dir / "expected_annexes.json"
    expected_path.write_text(
        json.dumps(document, ensure_ascii=False, indent=1), encoding="utf-8"
    )
    return cells_path, expected_path
