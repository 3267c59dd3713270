"""Mask personal data (names and ID numbers of natural persons) outside the warehouse.

Logs, Dagster metadata, previews, annexes and feedback files go through these helpers;
only the warehouse keeps the delivered values.
"""

from __future__ import annotations

import re

import pandas as pd

from credit_etl.identifiers import mask_id, mask_name

# A run of 15 to 18 digits (the last may be X) inside free text: an ID number, or
# one with a digit missing or added, which reveals nearly as much. ID numbers start
# with a province code from 11 to 82; a run starting with 9 is a company's code.
_ID_IN_TEXT = re.compile(
    r"(?<![0-9A-Za-z])([1-8]\d{5})(\d{5,8})(\d{3}[0-9Xx])(?![0-9A-Za-z])"
)
_ID_COLUMNS = ("id_number", "legal_representative_id_number")
_NAME_COLUMNS = ("legal_representative",)
NATURAL_PERSON_TYPES = ("自然人",)


def mask_text(text: str | None) -> str | None:
    """Mask every ID number that appears inside a free text (e.g. a reject reason)."""
    if text is None:
        return None
    return _ID_IN_TEXT.sub(
        lambda m: m.group(1) + "*" * len(m.group(2)) + m.group(3), str(text)
    )


def is_natural_person(row: pd.Series) -> bool:
    subject_type = row.get("subject_type")
    if isinstance(subject_type, str) and subject_type.strip() in NATURAL_PERSON_TYPES:
        return True
    id_number = row.get("id_number")
    uscc = row.get("uscc")
    return bool(isinstance(id_number, str) and id_number and not uscc)


def mask_records(frame: pd.DataFrame) -> pd.DataFrame:
    """Return a copy of landed records with natural persons' names and IDs masked."""
    masked = frame.copy()
    if "subject_name" in masked.columns:
        persons = masked.apply(is_natural_person, axis=1) if len(masked) else []
        masked["subject_name"] = [
            mask_name(name) if person else name
            for name, person in zip(masked["subject_name"], persons, strict=False)
        ]
    for column in _ID_COLUMNS:
        if column in masked.columns:
            masked[column] = masked[column].map(mask_id)
    for column in _NAME_COLUMNS:
        if column in masked.columns:
            masked[column] = masked[column].map(mask_name)
    for column in masked.columns:
        if masked[column].dtype == object:
            masked[column] = masked[column].map(
                lambda v: mask_text(v) if isinstance(v, str) else v
            )
    return masked


def _cell_text(value) -> str:
    if isinstance(value, list | tuple | set):
        return ", ".join(str(item) for item in value).replace("|", "\\|")
    if value is None or pd.isna(value):
        return ""
    return str(value).replace("|", "\\|")


def markdown_preview(frame: pd.DataFrame, max_rows: int = 10) -> str:
    """Render a short markdown table; the caller masks personal data first."""
    if frame.empty:
        return "(no rows)"
    shown = frame.head(max_rows)
    header = "| " + " | ".join(str(c) for c in shown.columns) + " |"
    rule = "| " + " | ".join("---" for _ in shown.columns) + " |"
    lines = [header, rule]
    for _, row in shown.iterrows():
        cells = [_cell_text(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    if len(frame) > max_rows:
        lines.append(f"\n{len(frame) - max_rows} more rows")
    return "\n".join(lines)
