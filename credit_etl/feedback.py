"""Feedback workbooks: what each unit delivered in a quarter and what it must fix.

One workbook per unit and quarter, ``exports/<quarter>/feedback/<unit_id>.xlsx``, with
four sheets: the unit's figures, its files with their counts, every rejected row with
its reason, and double-publicity records published late. Natural persons' ID numbers
and names are masked, and every text cell is written as text, never as a formula.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
from openpyxl import Workbook
from openpyxl.styles import Alignment, Font
from openpyxl.utils import get_column_letter

from credit_etl.annexes import display_width, save_atomically, truncate_rate, write_text
from credit_etl.identifiers import mask_id, mask_name
from credit_etl.masking import mask_text
from credit_etl.periods import Quarter
from credit_etl.schema import CATEGORY_ZH
from credit_etl.settings import Settings

log = logging.getLogger(__name__)

STATUS_ZH = {
    "landed": "已入库",
    "duplicate": "重复文件，未重复入库",
    "failed": "整个文件未能读取",
    "not_read": "命名或位置不符，未读取",
}
BOLD = Font(bold=True)
WRAP = Alignment(wrap_text=True, vertical="top")
MAX_WIDTH = 60
# Rows listed per sheet: enough for a clerk to find every kind of fault, and small
# enough that a unit with millions of bad rows still gets its workbook in seconds.
MAX_LISTED_ROWS = 10_000


def _table(sheet, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Write a header row and data rows; text as text, numbers as numbers."""
    widths = [display_width(h) for h in headers]
    for column, header in enumerate(headers, start=1):
        cell = sheet.cell(row=1, column=column)
        write_text(cell, header)
        cell.font = BOLD
    for row_index, row in enumerate(rows, start=2):
        for column, value in enumerate(row, start=1):
            cell = sheet.cell(row=row_index, column=column)
            if value is None:
                continue
            if isinstance(value, bool):
                write_text(cell, "是" if value else "否")
            elif isinstance(value, int | float):
                cell.value = value
            elif isinstance(value, dt.date):
                cell.value = value
                cell.number_format = "yyyy-mm-dd"
            else:
                write_text(cell, str(value))
                cell.alignment = WRAP
            shown = value.isoformat() if isinstance(value, dt.date) else str(value)
            widths[column - 1] = max(widths[column - 1], display_width(shown))
    for column, width in enumerate(widths, start=1):
        sheet.column_dimensions[get_column_letter(column)].width = min(
            width + 2, MAX_WIDTH
        )
    sheet.freeze_panes = "A2"
    sheet.page_setup.orientation = "landscape"
    sheet.page_setup.paperSize = sheet.PAPERSIZE_A4
    sheet.page_setup.fitToWidth = 1
    sheet.page_setup.fitToHeight = 0
    sheet.sheet_properties.pageSetUpPr.fitToPage = True
    sheet.print_title_rows = "1:1"


def _masked_record_value(column: str | None, value: str | None) -> str | None:
    if value is None:
        return None
    if column and ("证件号码" in column or "身份证" in column or "代码_5" in column):
        return mask_id(value)
    return mask_text(value)


def feedback_rows(
    con: duckdb.DuckDBPyConnection, settings: Settings, quarter: Quarter, unit_id: str
) -> dict[str, list[tuple]]:
    """Return the rows of each feedback sheet for one unit and quarter, masked."""
    window = {"unit": unit_id, "start": quarter.start, "end": quarter.end}
    files = con.execute(
        """SELECT path, category, received_date, status, rows_read, rows_landed,
                  rows_rejected, rows_repeated, error, notes
           FROM ledger
           WHERE (unit_id = $unit AND received_date BETWEEN $start AND $end)
              OR (unit_id IS NULL AND split_part(path, '/', 1) = $unit)
           ORDER BY received_date NULLS LAST, path""",
        window,
    ).fetchall()
    file_rows = []
    for (
        path,
        category,
        received,
        status,
        read,
        landed,
        rejected,
        repeated,
        error,
        notes,
    ) in files:
        note_text = "; ".join(json.loads(notes)) if notes else None
        file_rows.append(
            (
                f"incoming/{path}",
                CATEGORY_ZH.get(category, category),
                received,
                STATUS_ZH.get(status, status),
                read,
                landed,
                rejected,
                repeated,
                mask_text(error),
                note_text,
            )
        )

    rejects = con.execute(
        """SELECT r.path, r.sheet, r.row_no, r.column_name, r.value, r.reason
           FROM rejects r JOIN ledger l USING (file_id)
           WHERE r.unit_id = $unit AND l.received_date BETWEEN $start AND $end
           ORDER BY l.received_date, r.path, r.sheet NULLS FIRST, r.row_no
           LIMIT $limit""",
        {**window, "limit": MAX_LISTED_ROWS},
    ).fetchall()
    reject_total = con.execute(
        """SELECT count(*) FROM rejects r JOIN ledger l USING (file_id)
           WHERE r.unit_id = $unit AND l.received_date BETWEEN $start AND $end""",
        window,
    ).fetchone()[0]
    reject_rows = [
        (
            f"incoming/{path}",
            sheet,
            row_no,
            column,
            _masked_record_value(column, value),
            mask_text(reason),
        )
        for path, sheet, row_no, column, value, reason in rejects
    ]

    days = int(settings.timeliness_days)
    late = con.execute(
        f"""SELECT p.category, decision_number, subject_name, subject_type, uscc,
                   id_number, decision_date_value, p.received_date,
                   date_diff('day', decision_date_value, p.received_date) AS days,
                   l.path, p.row_no
            FROM (SELECT category, decision_number, subject_name, subject_type, uscc,
                         id_number, decision_date_value, received_date, file_id, row_no,
                         unit_id FROM rec_license
                  UNION ALL
                  SELECT category, decision_number, subject_name, subject_type, uscc,
                         id_number, decision_date_value, received_date, file_id, row_no,
                         unit_id FROM rec_penalty) p
            JOIN ledger l USING (file_id)
            WHERE p.unit_id = $unit AND p.received_date BETWEEN $start AND $end
              AND date_diff('day', decision_date_value, p.received_date) > {days}
            ORDER BY days DESC, decision_number
            LIMIT $limit""",
        {**window, "limit": MAX_LISTED_ROWS},
    ).fetchall()
    late_total = con.execute(
        f"""SELECT count(*) FROM (
                SELECT unit_id, decision_date_value, received_date FROM rec_license
                UNION ALL
                SELECT unit_id, decision_date_value, received_date FROM rec_penalty)
            WHERE unit_id = $unit AND received_date BETWEEN $start AND $end
              AND date_diff('day', decision_date_value, received_date) > {days}""",
        window,
    ).fetchone()[0]
    late_rows = []
    for (
        category,
        number,
        name,
        subject_type,
        uscc,
        id_number,
        decided,
        received,
        gap,
        path,
        row_no,
    ) in late:
        person = (subject_type or "").strip() == "自然人" or (id_number and not uscc)
        late_rows.append(
            (
                CATEGORY_ZH.get(category, category),
                number,
                mask_name(name) if person else name,
                uscc or mask_id(id_number),
                decided,
                received,
                gap,
                f"incoming/{path}",
                row_no,
            )
        )

    figures = con.execute(
        """SELECT total_stock, quarter_increment, year_stock, dp_stock,
                  dp_quarter_increment, dp_quarter_timely, dp_year_stock, dp_year_timely,
                  redblack_quarter, redblack_year, commitment_total, cutoff
           FROM unit_figures WHERE period = $period AND unit_id = $unit""",
        {"period": quarter.label, "unit": unit_id},
    ).fetchone()
    figure_rows: list[tuple] = []
    if figures:
        (
            stock,
            q_inc,
            y_stock,
            dp_stock,
            dp_q,
            dp_q_timely,
            dp_y,
            dp_y_timely,
            rb_q,
            rb_y,
            commitments,
            cutoff,
        ) = figures
        figure_rows = [
            ("截止日期", cutoff),
            ("总数据量 存量", stock),
            (f"{quarter.quarter_word}增量", q_inc),
            (f"{quarter.year_word}存量", y_stock),
            ("双公示 存量", dp_stock),
            (f"双公示 {quarter.quarter_word}增量", dp_q),
            (f"双公示 {quarter.quarter_word}及时率", truncate_rate(dp_q_timely, dp_q)),
            (f"双公示 {quarter.year_word}存量", dp_y),
            (f"双公示 {quarter.year_word}及时率", truncate_rate(dp_y_timely, dp_y)),
            (f"红黑名单 {quarter.quarter_word}", rb_q),
            (f"红黑名单 {quarter.year_word}总量", rb_y),
            ("信用承诺 总量", commitments),
        ]
    for label, shown, total in (
        ("退回记录", len(reject_rows), reject_total),
        ("逾期公示记录", len(late_rows), late_total),
    ):
        note = (
            f"共 {total} 条"
            if shown == total
            else f"共 {total} 条，仅列出前 {shown} 条"
        )
        figure_rows.append((label, note))
    return {
        "figures": figure_rows,
        "files": file_rows,
        "rejects": reject_rows,
        "late": late_rows,
    }


# Records, per unit, what its workbook was written from, so unchanged units are
# not written again.
STATE_FILE = ".written.json"


def _signatures(
    con: duckdb.DuckDBPyConnection, settings: Settings, quarter: Quarter
) -> dict[str, str]:
    """Return, per unit, a text that changes whenever its workbook would."""
    rows = con.execute(
        """SELECT u.unit_id,
                  coalesce((SELECT max(file_id) FROM ledger l
                            WHERE l.unit_id = u.unit_id
                               OR (l.unit_id IS NULL
                                   AND split_part(l.path, '/', 1) = u.unit_id)), 0),
                  (SELECT cutoff || '/' || version || '/' || rule FROM figure_state s
                   WHERE s.unit_id = u.unit_id AND s.period = $period)
           FROM units u""",
        {"period": quarter.label},
    ).fetchall()
    days = settings.timeliness_days
    return {
        unit_id: f"v1|{last_file}|{state}|late>{days}"
        for unit_id, last_file, state in rows
    }


def _read_state(path: Path) -> dict[str, str]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_state(path: Path, state: dict[str, str]) -> None:
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(state, sort_keys=True), encoding="utf-8")
    temp.replace(path)


def write_feedback(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    quarter: Quarter,
    unit_ids: Sequence[str] | None = None,
) -> list[Path]:
    """Write the feedback workbook of each unit (default: every unit) for a quarter."""
    units = con.execute(
        "SELECT unit_id, name_zh FROM units ORDER BY kind, annex_order"
    ).fetchall()
    wanted = set(unit_ids) if unit_ids else None
    folder = settings.exports_dir / quarter.label / "feedback"
    folder.mkdir(parents=True, exist_ok=True)
    state_path = folder / STATE_FILE
    written = _read_state(state_path)
    signatures = _signatures(con, settings, quarter)
    paths = []
    skipped = 0
    for unit_id, name_zh in units:
        if wanted is not None and unit_id not in wanted:
            continue
        path = folder / f"{unit_id}.xlsx"
        signature = signatures.get(unit_id, "")
        if path.exists() and written.get(unit_id) == signature:
            paths.append(path)
            skipped += 1
            continue
        rows = feedback_rows(con, settings, quarter, unit_id)
        workbook = Workbook()
        summary = workbook.active
        summary.title = "概况"
        _table(summary, ["单位", name_zh], [("季度", quarter.label), *rows["figures"]])
        for cell in summary["B"][1:]:
            if isinstance(cell.value, float):
                cell.number_format = "0.00%"
        _table(
            workbook.create_sheet("文件"),
            [
                "文件",
                "类别",
                "接收日期",
                "状态",
                "读取行数",
                "入库行数",
                "退回行数",
                "重复行数",
                "错误",
                "说明",
            ],
            rows["files"],
        )
        _table(
            workbook.create_sheet("退回记录"),
            ["文件", "工作表", "行号", "列", "值", "原因"],
            rows["rejects"],
        )
        _table(
            workbook.create_sheet("逾期公示"),
            [
                "类别",
                "决定书文号",
                "行政相对人",
                "代码或证件号码",
                "决定日期",
                "接收日期",
                "间隔天数",
                "文件",
                "行号",
            ],
            rows["late"],
        )
        save_atomically(workbook, path)
        paths.append(path)
        written[unit_id] = signature
        _write_state(state_path, written)
    log.info(
        "feedback workbooks for %s in %s: %d written, %d unchanged",
        quarter.label,
        folder,
        len(paths) - skipped,
        skipped,
    )
    return paths
