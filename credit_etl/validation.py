"""Set-based row validation: one SQL statement checks every row of a staged sheet.

A staged table has columns ``row_no, sheet, issue_column, issue, c0 .. cN`` holding
the delivered text. ``build_checked_sql`` turns it into one row per non-empty record
with the standard columns cleaned, identifiers folded, dates parsed, the natural key
hashed, the first failing rule as ``reject`` (column, value, reason) and ``flags``.
Identifiers in the SQL come from code; values from files are bound as parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from credit_etl.readers import HeaderMap
from credit_etl.schema import (
    AMOUNT,
    CODE,
    COMMITMENT_TYPES,
    DATE,
    TEXT,
    CategorySpec,
)
from credit_etl.sqlmacros import SPACE_CLASS


@dataclass
class CheckedQuery:
    sql: str
    params: dict[str, object]
    # JSON object of every delivered field by header name, for the rejects table;
    # it reads the staged columns c0 .. cN, which the checked table leaves out.
    record_sql: str
    record_params: dict[str, object]


class _Params:
    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.values: dict[str, object] = {}

    def add(self, value: object) -> str:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return f"${self.prefix}{name}"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def build_checked_sql(
    spec: CategorySpec,
    header: HeaderMap,
    stage: str,
    target: str,
    received_date,
    max_field_chars: int,
    shortcuts: bool = False,
) -> CheckedQuery:
    """Return SQL creating temp table ``target`` from staged table ``stage``.

    ``shortcuts`` adds tests that let most cells skip a regular expression. They
    save about a tenth of the statement's run time on a large sheet, but planning
    the longer statement costs about 13 ms more, which outweighs that on a small one.
    """
    params = _Params()
    received = params.add(received_date)
    width = len(header.names)
    raw = {key: f"c{pos}" for key, pos in header.by_key.items()}

    def delivered(key: str) -> str:
        return params.add(header.delivered_name(spec, key))

    edge = f"'^{SPACE_CLASS}+|{SPACE_CLASS}+$'"

    def plain_at(text: str) -> str:
        # The first character of ``text`` is visible ASCII or CJK, so not white space.
        return f"(ascii({text}) BETWEEN 33 AND 126 OR ascii({text}) BETWEEN 19968 AND 65278)"

    # Columns that rules or keys read are trimmed; the rest are stored as delivered.
    checked_keys = {
        *spec.required,
        *spec.key_columns,
        *([spec.preferred_key] if spec.preferred_key else []),
        *(c.key for c in spec.columns if c.kind != TEXT),
    }

    def clean(key: str) -> str:
        if key not in raw:
            return "CAST(NULL AS VARCHAR)"
        if key not in checked_keys:
            return raw[key]
        cell = raw[key]
        if not shortcuts:
            return f"nullif(regexp_replace({cell}, {edge}, '', 'g'), '')"
        # Most cells start and end with a visible character and skip the regular
        # expression. Run on every cell, it takes about 15 % of the statement's time.
        return (
            f"nullif(CASE WHEN {plain_at(cell)} AND {plain_at(f'right({cell}, 1)')} "
            f"THEN {cell} ELSE regexp_replace({cell}, {edge}, '', 'g') END, '')"
        )

    select: list[str] = ["row_no", "sheet", "issue_column", "issue"]
    for column in spec.columns:
        if column.kind == CODE:
            select.append(f"ce_fold({clean(column.key)}) AS {column.key}")
        else:
            select.append(f"{clean(column.key)} AS {column.key}")
    select += [f"c{pos}" for pos in range(width)]
    everything = ", ".join(f"c{pos}" for pos in range(width)) or "NULL"
    # A row counts when any cell has a character other than white space. A cell that
    # starts with a visible character settles it. Otherwise the regular expression
    # runs over the row's cells.
    visible = ""
    if shortcuts:
        visible = " ".join(
            f"WHEN {plain_at(f'c{pos}')} THEN TRUE" for pos in range(width)
        )
    non_empty = (
        f"CASE {visible} WHEN coalesce({everything}) IS NULL THEN FALSE "
        f"ELSE regexp_matches(concat_ws('', {everything}), '[^{SPACE_CLASS[1:-1]}]') END"
    )
    # Parsing is bound only for date columns the file has, since each ce_date
    # expands to several regular expressions that the planner handles per file.
    dated = ", ".join(
        (
            f"ce_date({column.key}) AS {column.key}__d"
            if column.key in raw
            else f"CAST(NULL AS DATE) AS {column.key}__d"
        )
        for column in spec.columns
        if column.kind == DATE
    )

    rules: list[str] = []

    def rule(condition: str, column_key: str | None, value: str, reason: str) -> None:
        column_name = delivered(column_key) if column_key else "NULL"
        rules.append(
            f"WHEN {condition} THEN struct_pack(col := {column_name}, "
            f"val := {value}, why := {reason})"
        )

    # 1. A cell the reader could not turn into text (a code stored as a number).
    # An identifier the reader could not use counts as an invalid identifier below,
    # so a valid second identifier still lets the row land.
    uscc_name, id_name = delivered("uscc"), delivered("id_number")
    rules.append(
        f"WHEN issue IS NOT NULL AND issue_column IS DISTINCT FROM {uscc_name} "
        f"AND issue_column IS DISTINCT FROM {id_name} THEN "
        "struct_pack(col := issue_column, val := NULL, why := issue)"
    )
    # 2. Field length.
    for pos in range(width):
        name = params.add(header.names[pos] or f"column {pos + 1}")
        limit = params.add(max_field_chars)
        rules.append(
            f"WHEN length(c{pos}) > {limit} THEN struct_pack(col := {name}, "
            f"val := left(c{pos}, 50) || '…', why := 'the value has ' || length(c{pos})"
            f" || ' characters, more than the limit of ' || {limit} "
            "|| '; shorten it or split the text')"
        )
    # 3. Required columns.
    for key in spec.required:
        name = delivered(key)
        rule(
            f"{key} IS NULL",
            key,
            "NULL",
            f"{name} || ' is empty; it is required, fill it in'",
        )
    # 4. Subject identifier.
    rules.append(
        "WHEN uscc IS NULL AND id_number IS NULL THEN struct_pack("
        f"col := {uscc_name} || ' / ' || {id_name}, val := NULL, "
        f"why := 'no subject identifier: ' || {uscc_name} || ' and ' || {id_name} || "
        "' are both empty; give the unified social credit code of an organisation "
        "or the ID number of a person')"
    )
    rules.append(
        "WHEN NOT subject_ok THEN CASE WHEN uscc IS NOT NULL THEN "
        f"struct_pack(col := {uscc_name}, val := uscc, why := uscc_problem "
        "|| '; check the code and send the row again') ELSE "
        f"struct_pack(col := {id_name}, val := id_number, why := id_problem "
        "|| '; check the ID number and send the row again') END"
    )
    # 5. Dates.
    for column in spec.columns:
        if column.kind != DATE or column.key not in raw:
            continue
        name = delivered(column.key)
        rule(
            f"{column.key} IS NOT NULL AND {column.key}__d IS NULL",
            column.key,
            column.key,
            f"ce_date_problem_given({column.key}, {column.key}__d)",
        )
        if column.key == spec.event_date:
            rule(
                f"{column.key}__d > {received}",
                column.key,
                column.key,
                f"strftime({column.key}__d, '%Y-%m-%d') || ' is after the "
                f"received date ' || strftime({received}, '%Y-%m-%d') || '; a ' || "
                f"{name} || ' cannot be later than the day the file was received, "
                "check the date'",
            )
            rule(
                f"{column.key}__d < DATE '1949-10-01'",
                column.key,
                column.key,
                f"strftime({column.key}__d, '%Y-%m-%d') || ' is before "
                "1949-10-01; check the year'",
            )
    # 6. Amounts.
    for column in spec.columns:
        if column.kind == AMOUNT and column.key in raw:
            rule(
                f"{column.key} IS NOT NULL AND ce_amount({column.key}) IS NULL",
                column.key,
                column.key,
                f"'''' || {column.key} || ''' cannot be read as an amount; write a "
                "number in 10,000 yuan, for example 0.5, or leave the cell empty'",
            )
    # 7. Commitment type.
    type_case = ""
    if spec.category == "commitment":
        type_case = (
            "CASE commitment_type "
            + " ".join(
                f"WHEN {_quote(word)} THEN {_quote(stored)}"
                for word, stored in COMMITMENT_TYPES.items()
            )
            + " END"
        )
        allowed = "主动公示型 (or 主动型), 审批替代型, 信用修复型, 行业自律型, 容缺受理型, 证明事项型, 其他"
        type_list = "[" + ", ".join(_quote(t) for t in COMMITMENT_TYPES) + "]"
        rule(
            f"commitment_type IS NOT NULL AND ({type_case}) IS NULL",
            "commitment_type",
            "commitment_type",
            f"'''' || commitment_type || ''' is not a commitment type; use one of "
            f"{allowed}' || coalesce(' (' || list_filter({type_list}, "
            "lambda t: starts_with(t, commitment_type))[1] || ' was probably meant)', '')",
        )

    written_lower = (
        f"CASE WHEN contains({raw['uscc']}, 'x') THEN ' (written with x)' ELSE '' END"
        if "uscc" in raw
        else "''"
    )

    # Flags are kept as text, "column<US>flag" joined by <RS>, because building a
    # list per row costs more than the rest of the validation.
    def flag(condition: str, column_name: str, text: str) -> str:
        return f"CASE WHEN {condition} THEN {column_name} || chr(31) || {text} END"

    flags = [
        flag(
            "uscc = '00000000000000000X'",
            uscc_name,
            f"'individual-business placeholder 00000000000000000X' || {written_lower}",
        ),
        flag(
            "length(id_number) = 15 AND id_problem IS NULL",
            id_name,
            "'15-digit pre-1999 ID number'",
        ),
        flag(
            "uscc IS NOT NULL AND uscc_problem IS NOT NULL AND subject_ok",
            uscc_name,
            "'invalid code ignored, the ID number identifies the subject: ' "
            "|| uscc_problem",
        ),
        flag(
            "id_number IS NOT NULL AND id_problem IS NOT NULL AND subject_ok",
            id_name,
            "'invalid ID number ignored, the code identifies the subject: ' "
            "|| id_problem",
        ),
    ]

    # The individual-business placeholder code identifies no one, so a valid ID
    # number beside it identifies the subject.
    subject_key = (
        "CASE WHEN uscc IS NOT NULL AND uscc_problem IS NULL "
        "AND uscc <> '00000000000000000X' THEN 'U:' || uscc "
        "WHEN id_number IS NOT NULL AND id_problem IS NULL THEN 'P:' || id_number "
        "ELSE 'U:' || uscc END"
    )
    key_parts = {
        "license": f"decision_number || '|' || {subject_key}",
        "penalty": f"decision_number || '|' || {subject_key}",
        "red_list": f"{subject_key} || '|' || coalesce(list_name, '') || '|' || "
        "strftime(listed_date__d, '%Y-%m-%d')",
        "black_list": f"{subject_key} || '|' || coalesce(list_name, '') || '|' || "
        "strftime(listed_date__d, '%Y-%m-%d')",
        "commitment": "coalesce('C:' || commitment_code, "
        f"{subject_key} || '|' || ({type_case or 'commitment_type'}) || '|' || "
        "strftime(commitment_date__d, '%Y-%m-%d'))",
        # A JSON array keeps the cell boundaries, so ("a|b", "c") and ("a", "b|c")
        # stay two rows.
        "other": "coalesce('R:' || record_id, 'W:' || CAST(to_json(["
        + ", ".join(f"c{pos}" for pos in range(width))
        + "]) AS VARCHAR))",
    }[spec.category]

    record_params = _Params(prefix="r")
    record_sql = (
        "json_object("
        + ", ".join(
            f"{record_params.add(_unique_name(header.names, pos))}, c{pos}"
            for pos in range(width)
        )
        + ")"
    )

    typed: list[str] = []
    if spec.event_date:
        typed.append(f"{spec.event_date}__d AS {spec.event_date}_value")
    if spec.category == "commitment":
        typed.append(f"({type_case}) AS commitment_type_value")
    if spec.category == "penalty":
        typed.append("ce_amount(fine_amount) AS fine_amount_value")
    if spec.keeps_unknown_columns:
        known = set(header.by_key.values())
        pairs = [
            f"{params.add(_unique_name(header.names, pos))}, c{pos}"
            for pos in range(width)
            if pos not in known and header.names[pos]
        ]
        typed.append(
            f"json_object({', '.join(pairs)}) AS extra"
            if pairs
            else "NULL::JSON AS extra"
        )

    sql = f"""
CREATE TEMP TABLE {target} AS
WITH src AS (
    SELECT {", ".join(select)} FROM {stage} WHERE {non_empty}
), dated AS (
    SELECT *{", " + dated if dated else ""} FROM src
), checks AS (
    SELECT *,
        CASE WHEN regexp_full_match(uscc, '[0-9A-HJ-NP-RTUWXY]{{18}}')
             THEN ce_uscc_check(uscc) END AS uscc_expected,
        CASE WHEN regexp_full_match(id_number, '\\d{{17}}[\\dX]')
             THEN ce_id_check(id_number) END AS id_expected
    FROM dated
), probed AS (
    SELECT *,
        CASE WHEN issue IS NOT NULL AND issue_column = {uscc_name} THEN issue
             WHEN uscc IS NOT NULL THEN ce_uscc_problem_given(uscc, uscc_expected)
        END AS uscc_problem,
        CASE WHEN issue IS NOT NULL AND issue_column = {id_name} THEN issue
             WHEN id_number IS NOT NULL
             THEN ce_id_problem_given(id_number, id_expected)
        END AS id_problem
    FROM checks
), judged AS (
    SELECT *,
        coalesce((uscc IS NOT NULL AND uscc_problem IS NULL)
              OR (id_number IS NOT NULL AND id_problem IS NULL), FALSE) AS subject_ok
    FROM probed
)
SELECT * EXCLUDE ({everything}),
    CASE {" ".join(rules)} END AS reject,
    nullif(concat_ws(chr(30), {", ".join(flags)}), '') AS flag_text,
    md5_number({params.add(spec.category)} || '|' || ({key_parts})) AS key_hash,
    {", ".join(typed) if typed else "NULL AS no_typed"}
FROM judged
"""
    used = set(re.findall(r"\$(p\d+)\b", sql))
    return CheckedQuery(
        sql=sql,
        params={k: v for k, v in params.values.items() if k in used},
        record_sql=record_sql,
        record_params={f"r{k}": v for k, v in record_params.values.items()},
    )


def _unique_name(names: list[str], pos: int) -> str:
    name = names[pos] or f"column {pos + 1}"
    if names.count(names[pos]) > 1 or not names[pos]:
        return f"{name} (column {pos + 1})"
    return name
