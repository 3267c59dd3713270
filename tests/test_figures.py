"""Bulletin figures computed from hand-made extracts landed in a real warehouse."""

from __future__ import annotations

import datetime as dt

import duckdb
import pytest

from credit_etl.figures import compute_figures
from credit_etl.ingest import ingest_incoming
from credit_etl.periods import Quarter
from credit_etl.registry import load_units
from credit_etl.settings import Settings
from credit_etl.warehouse import FIGURE_COLUMNS, connect

Q4 = Quarter(2018, 4)
DEADLINE = dt.date(2019, 1, 10)

LICENSE_HEADER = [
    "行政相对人名称",
    "统一社会信用代码",
    "行政许可决定文书号",
    "许可决定日期",
]
PENALTY_HEADER = [
    "行政相对人名称",
    "统一社会信用代码",
    "行政处罚决定书文号",
    "处罚决定日期",
]
COMMITMENT_HEADER = [
    "承诺人名称",
    "统一社会信用代码",
    "承诺类型",
    "承诺作出日期",
    "承诺编码",
]
LIST_HEADER = ["主体名称", "统一社会信用代码", "名单名称", "认定日期"]
OTHER_HEADER = ["记录编号", "主体名称", "统一社会信用代码", "信息类别"]
USCC = "91410700061675925P"

HEADERS = {
    "license": LICENSE_HEADER,
    "penalty": PENALTY_HEADER,
    "commitment": COMMITMENT_HEADER,
    "red_list": LIST_HEADER,
    "black_list": LIST_HEADER,
    "other": OTHER_HEADER,
}


def compact(day: dt.date) -> str:
    return day.strftime("%Y%m%d")


@pytest.fixture
def deliver_records(write_extract):
    """Write one file of ``count`` records of a category, received on a given day."""

    def write(
        unit: str,
        category: str,
        received: dt.date,
        count: int = 1,
        decided: dt.date | None = None,
        suffix: str = "",
        types: list[str] | None = None,
        first_number: int = 1,
    ) -> None:
        event = (decided or received).isoformat()
        rows = []
        for n in range(first_number, first_number + count):
            key = f"{unit}-{compact(received)}-{n}"
            if category in ("license", "penalty"):
                rows.append(["新乡市某某有限公司", USCC, key, event])
            elif category == "commitment":
                kinds = types or ["主动公示型"]
                kind = kinds[(n - first_number) % len(kinds)]
                rows.append(["新乡市某某有限公司", USCC, kind, event, key])
            elif category in ("red_list", "black_list"):
                rows.append(["新乡市某某有限公司", USCC, key, event])
            else:
                rows.append([key, "新乡市某某有限公司", USCC, "水费"])
        name = f"{unit}/{compact(received)}_{category}{suffix}.csv"
        write_extract(name, HEADERS[category], rows)

    return write


def figures(
    settings: Settings,
    con: duckdb.DuckDBPyConnection,
    cutoff: dt.date | None = None,
) -> dict[str, dict]:
    """Ingest everything delivered, compute Q4 2018 and return unit and total rows."""
    ingest_incoming(con, settings)
    compute_figures(con, settings, Q4, cutoff)
    result: dict[str, dict] = {}
    for table, key in (("unit_figures", "unit_id"), ("total_figures", "scope")):
        cursor = con.execute(f"SELECT * FROM {table} WHERE period = '2018Q4'")
        names = [d[0] for d in cursor.description]
        for row in cursor.fetchall():
            record = dict(zip(names, row, strict=True))
            result[record[key]] = record
    return result


# ------------------------------------------------------------------------------ windows


@pytest.mark.parametrize(
    ("received", "stock", "quarter", "year"),
    [
        (dt.date(2017, 12, 31), 1, 0, 0),
        (dt.date(2018, 1, 1), 1, 0, 1),
        (dt.date(2018, 9, 30), 1, 0, 1),
        (dt.date(2018, 10, 1), 1, 1, 1),
        (dt.date(2018, 12, 31), 1, 1, 1),
        (DEADLINE, 1, 0, 0),
        (DEADLINE + dt.timedelta(days=1), 0, 0, 0),
    ],
)
def test_received_date_windows(
    settings, warehouse, deliver_records, received, stock, quarter, year
) -> None:
    deliver_records("weibin", "license", received)

    unit = figures(settings, warehouse)["weibin"]

    assert unit["cutoff"] == DEADLINE
    assert unit["total_stock"] == stock
    assert unit["quarter_increment"] == quarter
    assert unit["year_stock"] == year
    assert unit["dp_stock"] == stock
    assert unit["dp_quarter_increment"] == quarter
    assert unit["dp_year_stock"] == year


def test_explicit_cutoff_window(settings, warehouse, deliver_records) -> None:
    deliver_records("weibin", "other", dt.date(2018, 12, 31))
    deliver_records("weibin", "other", dt.date(2019, 1, 1))

    unit = figures(settings, warehouse, cutoff=dt.date(2018, 12, 31))["weibin"]

    assert unit["cutoff"] == dt.date(2018, 12, 31)
    assert unit["total_stock"] == 1
    assert unit["quarter_increment"] == 1


def test_cutoff_before_quarter_end_rejected(settings, warehouse) -> None:
    with pytest.raises(ValueError, match="2018-12-30"):
        compute_figures(warehouse, settings, Q4, dt.date(2018, 12, 30))


def test_quarter_counts_received_not_decided(
    settings, warehouse, deliver_records
) -> None:
    deliver_records(
        "weibin", "penalty", dt.date(2018, 10, 2), decided=dt.date(2018, 9, 28)
    )

    unit = figures(settings, warehouse)["weibin"]

    assert unit["dp_quarter_increment"] == 1
    assert unit["dp_quarter_timely"] == 1


def test_category_groups(settings, warehouse, deliver_records) -> None:
    day = dt.date(2018, 11, 1)
    deliver_records("weibin", "license", day, count=2)
    deliver_records("weibin", "penalty", day, count=3)
    deliver_records("weibin", "red_list", day, count=4)
    deliver_records("weibin", "black_list", day, count=5)
    deliver_records("weibin", "other", day, count=6)
    deliver_records("weibin", "commitment", day, count=7)

    unit = figures(settings, warehouse)["weibin"]

    assert unit["total_stock"] == 20
    assert unit["quarter_increment"] == 20
    assert unit["year_stock"] == 20
    assert unit["dp_stock"] == 5
    assert unit["redblack_quarter"] == 9
    assert unit["redblack_year"] == 9
    assert unit["commitment_total"] == 7


# --------------------------------------------------------------------------- timeliness


def test_timeliness_seven_days(settings, warehouse, write_extract) -> None:
    rows = [
        ["新乡市甲公司", USCC, "on-day", "2018-10-15"],
        ["新乡市甲公司", USCC, "seven-days", "2018-10-08"],
        ["新乡市甲公司", USCC, "eight-days", "2018-10-07"],
        ["新乡市甲公司", USCC, "forty-days", "2018-09-05"],
    ]
    write_extract("weibin/20181015_penalty.csv", PENALTY_HEADER, rows)

    unit = figures(settings, warehouse)["weibin"]

    assert unit["dp_quarter_increment"] == 4
    assert unit["dp_quarter_timely"] == 2
    assert unit["dp_quarter_timeliness"] == pytest.approx(0.5)
    assert unit["dp_year_timeliness"] == pytest.approx(0.5)


def test_rates_null_without_records(settings, warehouse, deliver_records) -> None:
    deliver_records("weibin", "other", dt.date(2018, 11, 1))
    deliver_records("muye", "license", dt.date(2018, 5, 1))

    result = figures(settings, warehouse)

    assert result["weibin"]["dp_quarter_timeliness"] is None
    assert result["weibin"]["dp_year_timeliness"] is None
    assert result["muye"]["dp_quarter_timeliness"] is None
    assert result["muye"]["dp_year_timeliness"] == pytest.approx(1.0)
    assert result["fengquan"]["dp_quarter_timeliness"] is None


def test_redelivered_key_keeps_timeliness(settings, warehouse, write_extract) -> None:
    row = ["新乡市甲公司", USCC, "P702", "2018-10-03"]
    write_extract("weibin/20181010_penalty.csv", PENALTY_HEADER, [row])
    write_extract("weibin/20181020_penalty.csv", PENALTY_HEADER, [row])

    unit = figures(settings, warehouse)["weibin"]

    assert unit["dp_quarter_increment"] == 1
    assert unit["dp_quarter_timely"] == 1
    assert unit["dp_quarter_timeliness"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("working_days", "timely"),
    [(False, 1), (True, 2)],
    ids=["calendar-days", "working-days"],
)
def test_working_day_timeliness(tmp_path, write_extract, working_days, timely) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", timeliness_working_days=working_days
    )
    # Friday 2018-10-12 decisions: Tuesday 10-23 is the 7th working day after,
    # Wednesday 10-24 the 8th; the same-day one is timely either way.
    write_extract(
        "weibin/20181023_penalty.csv",
        PENALTY_HEADER,
        [["新乡市甲公司", USCC, "seventh", "2018-10-12"]],
    )
    write_extract(
        "weibin/20181024_penalty.csv",
        PENALTY_HEADER,
        [
            ["新乡市甲公司", USCC, "eighth", "2018-10-12"],
            ["新乡市甲公司", USCC, "same", "2018-10-24"],
        ],
    )
    con = connect(settings)
    try:
        unit = figures(settings, con)["weibin"]
    finally:
        con.close()

    assert unit["dp_quarter_increment"] == 3
    assert unit["dp_quarter_timely"] == timely


# ------------------------------------------------------------------------------- totals


def pooled_setup(deliver_records, write_extract) -> None:
    day = dt.date(2018, 10, 20)
    # Timely double-publicity records: weibin 1 of 1 and muye 1 of 3 (local scope),
    # tax 0 of 1 and environment 1 of 1 (departments).
    deliver_records("weibin", "penalty", day, decided=day)
    write_extract(
        "muye/20181020_penalty.csv",
        PENALTY_HEADER,
        [
            ["新乡市甲公司", USCC, "M1", "2018-10-20"],
            ["新乡市甲公司", USCC, "M2", "2018-10-01"],
            ["新乡市甲公司", USCC, "M3", "2018-10-02"],
        ],
    )
    deliver_records("tax", "license", day, decided=dt.date(2018, 10, 1))
    deliver_records("environment", "penalty", day, decided=day)
    deliver_records("muye", "other", day, count=4)
    deliver_records("hrss", "other", day, count=2)
    deliver_records("weibin", "commitment", day, count=3)


def test_total_rate_pooled(settings, warehouse, deliver_records, write_extract) -> None:
    pooled_setup(deliver_records, write_extract)

    result = figures(settings, warehouse)

    assert result["local"]["dp_quarter_timeliness"] == pytest.approx(2 / 4)
    assert result["local"]["dp_year_timeliness"] == pytest.approx(2 / 4)
    assert result["department"]["dp_quarter_timeliness"] == pytest.approx(1 / 2)


@pytest.mark.parametrize("scope", ["local", "department"])
def test_total_counts_equal_unit_sums(
    settings, warehouse, deliver_records, write_extract, scope: str
) -> None:
    pooled_setup(deliver_records, write_extract)
    kinds = ("district", "county") if scope == "local" else ("department",)
    members = [unit.unit_id for unit in load_units() if unit.kind in kinds]

    result = figures(settings, warehouse)

    for column in FIGURE_COLUMNS:
        summed = sum(result[unit][column] for unit in members)
        assert result[scope][column] == summed, column
    assert result[scope]["total_stock"] > 0


def test_per_capita(settings, warehouse, deliver_records) -> None:
    deliver_records("weibin", "other", dt.date(2018, 11, 1), count=3)
    deliver_records("muye", "other", dt.date(2018, 11, 1), count=2)
    deliver_records("hrss", "other", dt.date(2018, 11, 1), count=5)
    populations = {unit.unit_id: unit.population_10k for unit in load_units()}
    local_population = sum(
        unit.population_10k
        for unit in load_units()
        if unit.kind in ("district", "county")
    )

    result = figures(settings, warehouse)

    assert result["weibin"]["per_capita"] == pytest.approx(
        3 / (populations["weibin"] * 10_000)
    )
    assert result["muye"]["per_capita"] == pytest.approx(
        2 / (populations["muye"] * 10_000)
    )
    assert result["fengquan"]["per_capita"] == 0
    assert result["hrss"]["per_capita"] is None
    assert result["local"]["population_10k"] == pytest.approx(local_population)
    assert result["local"]["per_capita"] == pytest.approx(
        5 / (local_population * 10_000)
    )
    assert result["department"]["per_capita"] is None


# ---------------------------------------------------------------------- annexes 2 and 4


def test_annex2_quarter_split(settings, warehouse, deliver_records) -> None:
    deliver_records("weibin", "license", dt.date(2017, 12, 31))
    deliver_records("weibin", "license", dt.date(2018, 3, 31))
    deliver_records("weibin", "license", dt.date(2018, 4, 1), count=2)
    deliver_records("weibin", "license", dt.date(2018, 9, 30), count=3)
    deliver_records("weibin", "license", dt.date(2018, 10, 1), count=4)
    deliver_records("weibin", "penalty", dt.date(2018, 6, 30), count=5)
    deliver_records("weibin", "penalty", dt.date(2018, 12, 31), count=6)
    deliver_records("weibin", "penalty", dt.date(2019, 1, 2), count=7)

    unit = figures(settings, warehouse)["weibin"]

    assert unit["license_q1"] == 1
    assert unit["license_q2"] == 2
    assert unit["license_q3"] == 3
    assert unit["license_q4"] == 4
    assert unit["license_year"] == 10
    assert unit["license_stock"] == 11
    assert unit["penalty_q1"] == 0
    assert unit["penalty_q2"] == 5
    assert unit["penalty_q3"] == 0
    assert unit["penalty_q4"] == 6
    assert unit["penalty_year"] == 11
    assert unit["penalty_stock"] == 18


def test_annex4_types(settings, warehouse, deliver_records) -> None:
    types = [
        "主动公示型",
        "主动型",
        "信用修复型",
        "审批替代型",
        "审批替代型",
        "行业自律型",
        "容缺受理型",
        "证明事项型",
        "其他",
    ]
    deliver_records(
        "weibin", "commitment", dt.date(2018, 11, 1), count=len(types), types=types
    )
    deliver_records("weibin", "commitment", dt.date(2019, 2, 1), first_number=100)

    unit = figures(settings, warehouse)["weibin"]

    assert unit["commitment_voluntary"] == 2
    assert unit["commitment_credit_repair"] == 1
    assert unit["commitment_approval_substitute"] == 2
    assert unit["commitment_self_discipline"] == 1
    assert unit["commitment_other_types"] == 3
    assert unit["commitment_total"] == 9
    assert unit["total_stock"] == 0


def test_figures_recomputed_not_added(settings, warehouse, deliver_records) -> None:
    deliver_records("weibin", "license", dt.date(2018, 11, 1), count=2)
    figures(settings, warehouse)

    unit = figures(settings, warehouse)["weibin"]

    assert unit["total_stock"] == 2
    rows = warehouse.execute(
        "SELECT count(*) FROM unit_figures WHERE unit_id = 'weibin' AND period = '2018Q4'"
    ).fetchone()
    assert rows == (1,)
