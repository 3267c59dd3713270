"""Identifier, date and file-name rules, and the unit registry loader."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from credit_etl import identifiers
from credit_etl.discovery import parse_name
from credit_etl.registry import RegistryError, load_units
from credit_etl.sqlmacros import install_macros


@pytest.fixture(scope="module")
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB connection with the product's macros installed."""
    connection = duckdb.connect()
    install_macros(connection)
    yield connection
    connection.close()


def sql_value(con: duckdb.DuckDBPyConnection, expression: str, value: object):
    return con.execute(f"SELECT {expression}", [value]).fetchone()[0]


# ------------------------------------------------------------------------------ folding

# Delivered identifier -> folded form.
FOLD_CASES = {
    "９１４１０７０２ＭＡＴＥＲＮＲＭ４Ｃ": "91410702MATERNRM4C",
    "  91410702mag1f1l80h ": "91410702MAG1F1L80H",
    "91410702M\u3000A2YAGWE8P\xa0": "91410702MA2YAGWE8P",
    "9141 0702 MAYQ 1W4Q 39": "91410702MAYQ1W4Q39",
    "４１０７０２１９８５０６１８１１９Ｘ": "41070219850618119X",
    "41071119910207011x\u3000": "41071119910207011X",
    "\t410702198504128811\r\n": "410702198504128811",
    "4107021985\u20060618119X": "41070219850618119X",
    "4107021985\u200b0618119X": "41070219850618119X",
    "\ufeff41070219850618119X": "41070219850618119X",
    "00000000000000000x": "00000000000000000X",
}


@pytest.mark.parametrize(("delivered", "folded"), list(FOLD_CASES.items()))
def test_fold_sql(con, delivered: str, folded: str) -> None:
    assert sql_value(con, "ce_fold(?)", delivered) == folded


@pytest.mark.parametrize("delivered", list(FOLD_CASES))
def test_fold_python_agrees(con, delivered: str) -> None:
    assert identifiers.fold(delivered) == sql_value(con, "ce_fold(?)", delivered)


def test_fold_sql_empty_is_null(con) -> None:
    assert sql_value(con, "ce_fold(?)", " \u3000\xa0") is None


# ------------------------------------------------------------------------------- checks

# Folded USCC -> whether it is valid.
USCC_CASES = {
    "91410700061675925P": True,
    "91410702MATERNRM4C": True,
    "914107003770632204": True,
    "91410700MAXRQ8N364": True,
    "00000000000000000X": True,
    "91410700061675925Q": False,
    "91410702MA7Q1W4Q39": False,
    "91410700676214973": False,
    "9141070006167592511": False,
    "91410702264O23257T": False,
    "91410702308I56319R": False,
    "914107001109Z380XP": False,
    "9141070006167S925P": False,
    "9141070006167V925P": False,
    "000000000000000000": True,
    "00000000000000000Y": False,
}

# Folded ID number -> whether it is valid.
ID_CASES = {
    "410702198504128811": True,
    "41070319901203270X": True,
    "410782197608286520": True,
    "410702196411142308": True,
    "410702196411142305": False,
    "410702199002301236": False,
    "410702199002291238": False,
    "410704680721315": True,
    "410721650315123": True,
    "410721651315123": False,
    "41072165031512X": False,
    "4107021985041288": False,
    "41070219850412881X1": False,
    "4107021985041288X1": False,
    "410702000001011236": False,
}


@pytest.mark.parametrize(("code", "valid"), list(USCC_CASES.items()))
def test_uscc_python(code: str, valid: bool) -> None:
    assert (identifiers.uscc_problem(code) is None) == valid


@pytest.mark.parametrize(("code", "valid"), list(USCC_CASES.items()))
def test_uscc_sql(con, code: str, valid: bool) -> None:
    assert (sql_value(con, "ce_uscc_problem(?)", code) is None) == valid


@pytest.mark.parametrize(("number", "valid"), list(ID_CASES.items()))
def test_id_number_python(number: str, valid: bool) -> None:
    assert (identifiers.id_problem(number) is None) == valid


@pytest.mark.parametrize(("number", "valid"), list(ID_CASES.items()))
def test_id_number_sql(con, number: str, valid: bool) -> None:
    assert (sql_value(con, "ce_id_problem(?)", number) is None) == valid


@pytest.mark.parametrize(
    "code",
    [
        code
        for code in USCC_CASES
        if len(code) == 18
        and all(char in identifiers.USCC_ALPHABET for char in code[:17])
    ],
)
def test_uscc_check_char_agrees(con, code: str) -> None:
    expected = identifiers.uscc_check_char(code[:17])
    assert sql_value(con, "ce_uscc_check(?)", code) == expected


@pytest.mark.parametrize(
    "number", [n for n in ID_CASES if len(n) == 18 and n[:17].isdigit()]
)
def test_id_check_char_agrees(con, number: str) -> None:
    assert sql_value(con, "ce_id_check(?)", number) == identifiers.id_check_char(
        number[:17]
    )


def test_check_chars_match_python(con) -> None:
    # Each body puts every allowed character at every position at least once.
    alphabet, digits = identifiers.USCC_ALPHABET, "0123456789"
    codes = [
        "".join(alphabet[(start + 7 * place) % 31] for place in range(17))
        for start in range(31)
    ] + [
        "".join(alphabet[(start * place) % 31] for place in range(17))
        for start in range(31)
    ]
    numbers = [
        "".join(digits[(start + 3 * place) % 10] for place in range(17))
        for start in range(10)
    ] + [
        "".join(digits[(start * place + place) % 10] for place in range(17))
        for start in range(10)
    ]
    found = con.execute(
        "SELECT list_transform(?, lambda c: ce_uscc_check(c)), "
        "list_transform(?, lambda n: ce_id_check(n))",
        [[code + "0" for code in codes], [number + "0" for number in numbers]],
    ).fetchone()
    assert found[0] == [identifiers.uscc_check_char(code) for code in codes]
    assert found[1] == [identifiers.id_check_char(number) for number in numbers]


@pytest.mark.parametrize(
    ("code", "fragment"),
    [
        ("91410700061675925Q", "expected P, found Q"),
        ("91410702264O23257T", "(0 was probably meant)"),
        ("91410702308I56319R", "(1 was probably meant)"),
        ("91410700676214973", "17 characters"),
    ],
)
def test_uscc_problem_names_fault(con, code: str, fragment: str) -> None:
    reason = sql_value(con, "ce_uscc_problem(?)", code)
    assert fragment in reason
    assert code in reason


def test_id_problem_names_birth_date(con) -> None:
    reason = sql_value(con, "ce_id_problem(?)", "410702199002301236")
    assert "1990-02-30" in reason


# -------------------------------------------------------------------------------- dates

# Delivered text -> the date it reads as, or None when it cannot be read.
DATE_CASES = {
    "2018-10-05": dt.date(2018, 10, 5),
    "2018/10/05": dt.date(2018, 10, 5),
    "2018/10/5": dt.date(2018, 10, 5),
    "20181005": dt.date(2018, 10, 5),
    "2018.10.05": dt.date(2018, 10, 5),
    "2018年10月5日": dt.date(2018, 10, 5),
    "2018-10-05 08:30:15": dt.date(2018, 10, 5),
    "2018/10/5 8:30": dt.date(2018, 10, 5),
    "2018.10.05 08:30": dt.date(2018, 10, 5),
    "2018年10月5日 08:30": dt.date(2018, 10, 5),
    "20181005 08:30": dt.date(2018, 10, 5),
    "2018-10-05T08:30:00": dt.date(2018, 10, 5),
    "43382": dt.date(2018, 10, 9),
    "43382.75": dt.date(2018, 10, 9),
    "2016-02-29": dt.date(2016, 2, 29),
    "1949-10-01": dt.date(1949, 10, 1),
    "2018-02-29": None,
    "2018-02-30": None,
    "2018-13-01": None,
    "2018-00-10": None,
    "20180230": None,
    "2018年10月": None,
    "18-10-05": None,
    "201810": None,
    "待定": None,
}


@pytest.mark.parametrize(("text", "expected"), list(DATE_CASES.items()))
def test_date_macro(con, text: str, expected) -> None:
    assert sql_value(con, "ce_date(?)", text) == expected


@pytest.mark.parametrize(
    "text", [text for text, expected in DATE_CASES.items() if expected is None]
)
def test_date_problem_names_value(con, text: str) -> None:
    reason = sql_value(con, "ce_date_problem(?)", text)
    assert reason is not None
    assert text in reason


@pytest.mark.parametrize(
    ("text", "amount"),
    [
        ("0.5", "0.500000"),
        ("1,200", "1200.000000"),
        ("0", "0.000000"),
        (".5", "0.500000"),
    ],
)
def test_amount_macro(con, text: str, amount: str) -> None:
    assert str(sql_value(con, "ce_amount(?)", text)) == amount


@pytest.mark.parametrize("text", ["待定", "0.5万", "1e3", "", "--1"])
def test_amount_macro_rejects(con, text: str) -> None:
    assert sql_value(con, "ce_amount(?)", text) is None


# --------------------------------------------------------------------------- file names


@pytest.mark.parametrize(
    ("name", "received", "category", "extension"),
    [
        ("20181012_penalty.csv", dt.date(2018, 10, 12), "penalty", ".csv"),
        ("20181012_行政处罚.csv", dt.date(2018, 10, 12), "penalty", ".csv"),
        ("20181012_license_第三季度补报.csv", dt.date(2018, 10, 12), "license", ".csv"),
        ("20181012_行政许可.xlsx", dt.date(2018, 10, 12), "license", ".xlsx"),
        ("20181012_red_list.xlsx", dt.date(2018, 10, 12), "red_list", ".xlsx"),
        ("20181012_红名单.csv", dt.date(2018, 10, 12), "red_list", ".csv"),
        ("20181012_black_list_补报.XLSX", dt.date(2018, 10, 12), "black_list", ".xlsx"),
        ("20181012_黑名单.csv", dt.date(2018, 10, 12), "black_list", ".csv"),
        ("20181012_commitment.csv", dt.date(2018, 10, 12), "commitment", ".csv"),
        ("20181012_信用承诺.csv", dt.date(2018, 10, 12), "commitment", ".csv"),
        ("20181012_other_水费.csv", dt.date(2018, 10, 12), "other", ".csv"),
        ("20181012_其他.csv", dt.date(2018, 10, 12), "other", ".csv"),
        ("20181012_Penalty.CSV", dt.date(2018, 10, 12), "penalty", ".csv"),
        ("20160229_penalty.csv", dt.date(2016, 2, 29), "penalty", ".csv"),
    ],
)
def test_parse_name_accepts(name: str, received, category: str, extension: str) -> None:
    assert parse_name(name) == (received, category, extension)


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("penalty.csv", "received date"),
        ("2018-10-12_penalty.csv", "YYYYMMDD"),
        ("2018101_penalty.csv", "received date"),
        ("201810120_penalty.csv", "received date"),
        ("20180230_penalty.csv", "20180230 is not a real date"),
        ("20181312_penalty.csv", "20181312 is not a real date"),
        ("20181012_处罚.csv", "处罚"),
        ("20181012_penaltyx.csv", "penaltyx"),
        ("20181012_red.csv", "red"),
        ("20181012.csv", "no category"),
        ("20181012_penalty.txt", ".txt"),
        ("20181012_penalty.xls", ".xls"),
        ("20181012_penalty.csv.bak", ".bak"),
        ("20181012_penalty", "extension"),
    ],
)
def test_parse_name_rejects(name: str, fragment: str) -> None:
    problem = parse_name(name)
    assert isinstance(problem, str)
    assert fragment in problem


# ----------------------------------------------------------------------------- registry

REGISTRY_HEADER = (
    "unit_id,name_zh,name_en,kind,division_code,population_10k,annex_order\n"
)


def write_registry(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "units.csv"
    path.write_text(
        REGISTRY_HEADER + "".join(line + "\n" for line in lines), encoding="utf-8"
    )
    return path


def test_registry_loads(tmp_path: Path) -> None:
    path = write_registry(
        tmp_path,
        [
            "weibin,卫滨区,Weibin District,district,410703,22.09,1",
            "hrss,市人社局,HRSS Bureau,department,,,1",
        ],
    )
    units = load_units(path)
    assert [(u.unit_id, u.kind, u.population_10k) for u in units] == [
        ("weibin", "district", 22.09),
        ("hrss", "department", None),
    ]


def test_shipped_registry_loads() -> None:
    units = load_units()
    assert len(units) == 85
    assert len({unit.unit_id for unit in units}) == 85


@pytest.mark.parametrize(
    ("lines", "fragment"),
    [
        (
            [
                "weibin,卫滨区,Weibin District,district,410703,22.09,1",
                "weibin,牧野区,Muye District,district,410711,24.69,2",
            ],
            "'weibin' repeats line 2",
        ),
        (
            [
                "weibin,卫滨区,Weibin District,district,410703,22.09,1",
                "muye,卫滨区,Muye District,district,410711,24.69,2",
            ],
            "'卫滨区' repeats line 2",
        ),
        (["weibin,卫滨区,Weibin District,city,410703,22.09,1"], "'city' is not one of"),
        (["weibin,卫滨区,Weibin District,,410703,22.09,1"], "column kind"),
        (["weibin,卫滨区,Weibin District,district,410703,,1"], "population_10k: empty"),
        (["fengqiu,封丘县,Fengqiu County,county,410727,,8"], "population_10k: empty"),
        (
            ["weibin,卫滨区,Weibin District,district,410703,many,1"],
            "'many' is not a number",
        ),
        (["weibin,卫滨区,Weibin District,district,410703,0,1"], "greater than zero"),
        (["Weibin,卫滨区,Weibin District,district,410703,22.09,1"], "column unit_id"),
        (["weibin,,Weibin District,district,410703,22.09,1"], "column name_zh"),
        (["weibin,卫滨区,Weibin District,district,410703,22.09,first"], "annex_order"),
        ([], "no units"),
    ],
)
def test_registry_rejects(tmp_path: Path, lines: list[str], fragment: str) -> None:
    path = write_registry(tmp_path, lines)
    with pytest.raises(RegistryError) as raised:
        load_units(path)
    assert fragment in str(raised.value)


def test_registry_error_names_line(tmp_path: Path) -> None:
    path = write_registry(
        tmp_path,
        [
            "weibin,卫滨区,Weibin District,district,410703,22.09,1",
            "muye,牧野区,Muye District,district,410711,,2",
        ],
    )
    with pytest.raises(RegistryError, match="line 3"):
        load_units(path)


def test_registry_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "units.csv"
    path.write_text("unit_id,name_zh,kind\nweibin,卫滨区,district\n", encoding="utf-8")
    with pytest.raises(RegistryError, match="missing columns"):
        load_units(path)
