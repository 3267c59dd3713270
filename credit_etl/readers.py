"""Readers for delivered files: encoding detection, CSV headers and XLSX worksheets.

CSV bodies are parsed by DuckDB; this module only decides the encoding, hands DuckDB
UTF-8 (transcoding GB18030 and UTF-16 in a streaming pass) and reads the header row.
XLSX sheets are read with python-calamine, a Rust reader, row by row.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import hashlib
import io
import logging
import math
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from credit_etl.schema import CODE, DATE, CategorySpec, Column, match_header

log = logging.getLogger(__name__)

CHUNK = 1 << 20
BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
HEADER_SEARCH_ROWS = 30
# Text columns that identify a record: a long number in them has lost digits too,
# and two different records would merge under one key.
KEY_TEXT = frozenset(
    {"record_id", "decision_number", "commitment_code", "license_number"}
)


class FileError(ValueError):
    """The whole file cannot be read. The message gives the reason and the fix."""


@dataclass(frozen=True)
class Fingerprint:
    sha256: str
    encoding: str  # utf-8, utf-8-sig, utf-16 or gb18030
    size_bytes: int
    # Lines in the raw bytes: line feeds, plus one for a last line without one. None
    # when the encoding was not sniffed (XLSX and other binary files).
    lines: int | None = None
    # Offset of the first byte that is not UTF-8, up to 3 bytes too far, because the
    # decoder keeps an unfinished character from the chunk before. None for UTF-8.
    utf8_error_offset: int | None = None


# An empty line: two line ends in a row, LF or CRLF, or CR alone as older Mac Excel
# writes. A compiled pattern scans faster than bytes.find on text with a line end
# every hundred bytes. Counting line feeds is about seven times faster still, so the
# pattern runs only when the line count leaves room for an empty line.
_EMPTY_LINE = re.compile(rb"\n\r?\n|\r\r")


class _BlankLineScan:
    """Find, chunk by chunk, whether an empty line comes before the last line with content.

    DuckDB's CSV reader skips empty lines, which would shift the row numbers of every
    later record. Trailing empty lines shift nothing.
    """

    def __init__(self) -> None:
        self.first_blank: int | None = None
        self.last_content = -1
        self.offset = 0
        self.tail = b""

    def feed(self, chunk: bytes) -> None:
        window = self.tail + chunk
        base = self.offset - len(self.tail)
        if self.first_blank is None:
            found = _EMPTY_LINE.search(window)
            if found:
                self.first_blank = base + found.start()
        stripped = chunk.rstrip(b"\r\n")
        if stripped:
            self.last_content = self.offset + len(stripped) - 1
        self.offset += len(chunk)
        self.tail = window[-2:]

    def result(self) -> bool:
        return self.first_blank is not None and self.first_blank < self.last_content


def fingerprint(path: Path, sniff_encoding: bool = True) -> Fingerprint:
    """Hash a file, detect its encoding and look for empty lines in one streaming pass.

    Detection order: byte-order mark, then a strict UTF-8 decode of the whole file,
    then GB18030. GB18030 accepts most UTF-8 byte sequences, so trying it first would
    read UTF-8 files as nonsense without an error.
    """
    digest = hashlib.sha256()
    size = 0
    encoding: str | None = None
    utf8 = codecs.getincrementaldecoder("utf-8")("strict")
    utf8_ok = sniff_encoding
    line_feeds = 0
    last_byte = b""
    utf8_error: int | None = None
    with path.open("rb") as handle:
        first = True
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            if sniff_encoding:
                line_feeds += chunk.count(b"\n")
                last_byte = chunk[-1:]
            if first and sniff_encoding:
                for bom, name in BOMS:
                    if chunk.startswith(bom):
                        encoding = name
                        utf8_ok = False
                first = False
            if utf8_ok:
                try:
                    utf8.decode(chunk)
                except UnicodeDecodeError as error:
                    utf8_ok = False
                    utf8_error = size - len(chunk) + max(error.start, 0)
        if utf8_ok:
            try:
                utf8.decode(b"", final=True)
            except UnicodeDecodeError:
                utf8_ok = False
                utf8_error = size
    if encoding is None:
        encoding = "utf-8" if utf8_ok or not sniff_encoding else "gb18030"
    return Fingerprint(
        digest.hexdigest(),
        encoding,
        size,
        _line_count(line_feeds, last_byte) if sniff_encoding else None,
        utf8_error if sniff_encoding else None,
    )


def _line_count(line_feeds: int, last_byte: bytes) -> int:
    return line_feeds + (1 if last_byte not in (b"", b"\n") else 0)


def transcode_to_utf8(source: Path, encoding: str, target: Path) -> int:
    """Write ``source`` as UTF-8 without a byte-order mark, streaming, and count its lines."""
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    line_feeds = 0
    last_byte = b""
    with source.open("rb") as reader, target.open("wb") as writer:
        offset = 0
        while chunk := reader.read(CHUNK):
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError as error:
                raise FileError(
                    f"byte {offset + error.start} cannot be decoded as {encoding}; "
                    "save the file as UTF-8 (Excel: CSV UTF-8) and send it again"
                ) from None
            if offset == 0 and text.startswith("\ufeff"):
                text = text[1:]
            encoded = text.encode("utf-8")
            writer.write(encoded)
            line_feeds += encoded.count(b"\n")
            last_byte = encoded[-1:] or last_byte
            offset += len(chunk)
        try:
            tail = decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise FileError(
                f"the file ends inside a {encoding} character; it was probably cut off "
                "during upload, send it again"
            ) from None
        encoded = tail.encode("utf-8")
        writer.write(encoded)
        line_feeds += encoded.count(b"\n")
        last_byte = encoded[-1:] or last_byte
    return _line_count(line_feeds, last_byte)


def has_interior_blank_line(path: Path) -> bool:
    """Return True when an empty line comes before the last line with content."""
    scan = _BlankLineScan()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            scan.feed(chunk)
    return scan.result()


def read_csv_header(path: Path, encoding: str) -> tuple[list[str], str]:
    """Return the header fields and the delimiter (comma, or tab for UTF-16 text)."""
    with path.open("r", encoding=encoding, newline="") as handle:
        first_line = handle.readline()
    if not first_line.strip():
        raise FileError(
            "the first row is empty; the first row must hold the column names"
        )
    delimiter = "\t" if "\t" in first_line and "," not in first_line else ","
    fields = next(csv.reader(io.StringIO(first_line), delimiter=delimiter))
    return [field.lstrip("\ufeff") for field in fields], delimiter


@dataclass
class HeaderMap:
    """Positions of the standard columns in a delivered header."""

    names: list[str]  # delivered header names, by position
    by_key: dict[str, int]  # column key -> position
    unknown: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)

    def delivered_name(self, spec: CategorySpec, key: str) -> str:
        if key in self.by_key:
            return self.names[self.by_key[key]]
        return spec.column(key).name_zh


def map_header(spec: CategorySpec, names: list[str]) -> HeaderMap:
    header = HeaderMap(names=list(names), by_key={})
    for position, name in enumerate(names):
        if name is None or not str(name).strip():
            continue
        column = match_header(spec, name)
        if column is None:
            header.unknown.append(str(name))
        elif column.key in header.by_key:
            header.duplicates.append(str(name))
        else:
            header.by_key[column.key] = position
    return header


def missing_required(spec: CategorySpec, header: HeaderMap) -> list[str]:
    """Return the standard names of required columns the header lacks."""
    missing = [
        spec.column(key).name_zh for key in spec.required if key not in header.by_key
    ]
    if "uscc" not in header.by_key and "id_number" not in header.by_key:
        missing.append("统一社会信用代码 or 证件号码")
    return missing


# --------------------------------------------------------------------------- XLSX


@dataclass
class SheetRows:
    """One worksheet's data rows as text, after its header."""

    name: str
    header: HeaderMap
    header_row: int  # 1-based worksheet row number of the header's bottom row
    rows: Iterator[tuple[int, list[str | None], str | None, str | None]]
    # each row: (worksheet row number, values, issue column, issue reason)


@dataclass
class WorkbookRead:
    sheets: list[SheetRows]
    skipped_sheets: list[str]  # "sheet name: why"


_DIMENSION = re.compile(rb'<dimension\s+ref="([A-Z]+)(\d+)(?::([A-Z]+)(\d+))?"')


def _column_number(letters: bytes) -> int:
    number = 0
    for letter in letters.decode():
        number = number * 26 + ord(letter) - ord("A") + 1
    return number


def _declared_cells(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> int:
    """Read a sheet's declared dimension from the start of its XML, or 0."""
    with archive.open(info) as handle:
        head = handle.read(4096)
    match = _DIMENSION.search(head)
    if not match or not match.group(3):
        return 0
    rows = int(match.group(4)) - int(match.group(2)) + 1
    columns = _column_number(match.group(3)) - _column_number(match.group(1)) + 1
    return max(rows, 0) * max(columns, 0)


def check_xlsx_container(path: Path, max_uncompressed: int, max_cells: int) -> None:
    """Refuse a workbook that is not a zip or would expand past the limits.

    Both checks read only the zip directory and the first bytes of each sheet, so a
    zip bomb is refused before any sheet is expanded.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            total = sum(info.file_size for info in infos)
            if total > max_uncompressed:
                raise FileError(
                    f"the workbook expands to {total:,} bytes, more than the limit of "
                    f"{max_uncompressed:,}; split it into several files"
                )
            cells = sum(
                _declared_cells(archive, info)
                for info in infos
                if info.filename.startswith("xl/worksheets/")
                and info.filename.endswith(".xml")
            )
            if cells > max_cells:
                raise FileError(
                    f"the workbook's sheets declare {cells:,} cells, more than the "
                    f"limit of {max_cells:,}; split it into several files or save it as CSV"
                )
    except zipfile.BadZipFile:
        raise FileError(
            "the file is not a valid .xlsx workbook (not a zip archive); save it "
            "again from Excel as .xlsx, or send it as CSV"
        ) from None


def read_workbook(
    path: Path, spec: CategorySpec, max_cells: int, max_field_chars: int = 4000
) -> WorkbookRead:
    """Find each sheet's header and yield its data rows as text."""
    from python_calamine import CalamineWorkbook

    try:
        workbook = CalamineWorkbook.from_path(str(path))
    except Exception as error:  # calamine raises its own error types
        raise FileError(
            f"the workbook cannot be opened ({error}); save it again from Excel as "
            ".xlsx, or send it as CSV"
        ) from None
    result = WorkbookRead([], [])
    # A sheet may declare no dimension, so the loaded sizes are counted too.
    cells = 0
    for sheet_name in workbook.sheet_names:
        sheet = workbook.get_sheet_by_name(sheet_name)
        cells += sheet.height * sheet.width
        if cells > max_cells:
            raise FileError(
                f"the workbook has {cells:,} cells up to sheet {sheet_name!r}, more "
                f"than the limit of {max_cells:,}; split it into several files or save it as "
                "CSV"
            )
        found = _find_header(sheet, spec)
        if isinstance(found, str):
            result.skipped_sheets.append(f"{sheet_name}: {found}")
            continue
        header, header_row, data_start = found
        result.sheets.append(
            SheetRows(
                name=sheet_name,
                header=header,
                header_row=header_row,
                rows=_data_rows(sheet, spec, header, data_start, max_field_chars),
            )
        )
    return result


def _merged_fill(sheet, last_row: int) -> dict[tuple[int, int], tuple[int, int]]:
    """Map every cell covered by a merged range (within the first rows) to its anchor."""
    covered: dict[tuple[int, int], tuple[int, int]] = {}
    for (top, left), (bottom, right) in sheet.merged_cell_ranges or []:
        if top > last_row:
            continue
        for row in range(top, min(bottom, last_row) + 1):
            for col in range(left, right + 1):
                covered[(row, col)] = (top, left)
    return covered


def _sheet_origin(sheet) -> tuple[int, int]:
    """Return the first used row and column of a sheet, 0-based.

    python-calamine's ``iter_rows`` yields every row from the sheet's first row, empty
    ones included, but only the columns from the first used one. Row indexes below
    are therefore absolute, and each row gets the missing columns in front.
    """
    return sheet.start if sheet.start else (0, 0)


def _find_header(sheet, spec: CategorySpec):
    """Return (header map, header row number, first data row index) or why none."""
    start_row, start_col = _sheet_origin(sheet)
    top: list[list] = []
    for index, row in enumerate(sheet.iter_rows()):
        # The search covers the first rows with content, after any empty ones.
        if index >= start_row + HEADER_SEARCH_ROWS:
            break
        top.append([""] * start_col + list(row))
    if len(top) <= start_row:
        return "the sheet is empty"
    covered = _merged_fill(sheet, len(top) - 1)

    def cell_text(row_index: int, col: int) -> str:
        anchor = covered.get((row_index, col))
        if anchor is not None:
            source_row = anchor[0]
            if 0 <= source_row < len(top) and anchor[1] < len(top[source_row]):
                value = top[source_row][anchor[1]]
            else:
                value = ""
        else:
            value = top[row_index][col] if col < len(top[row_index]) else ""
        return "" if value is None else str(value).strip()

    best: tuple[int, int] | None = None
    for row_index, row in enumerate(top):
        names = [cell_text(row_index, col) for col in range(len(row))]
        header = map_header(spec, names)
        if missing_required(spec, header):
            continue
        score = len(header.by_key)
        if best is None or score > best[0]:
            best = (score, row_index)
    if best is None:
        required = ", ".join(spec.column(k).name_zh for k in spec.required)
        return (
            "no header row with the required columns "
            f"({required}, and 统一社会信用代码 or 证件号码) in its first "
            f"{HEADER_SEARCH_ROWS} rows"
        )
    row_index = best[1]
    names = [cell_text(row_index, col) for col in range(len(top[row_index]))]
    header = map_header(spec, names)
    # Data begins below the lowest merged range that touches the header row.
    data_start = row_index + 1
    for (top_row, _left), (bottom, _right) in sheet.merged_cell_ranges or []:
        if top_row <= row_index <= bottom:
            data_start = max(data_start, bottom + 1)
    return header, row_index + 1, data_start


def _data_rows(
    sheet, spec: CategorySpec, header: HeaderMap, data_start: int, max_field_chars: int
):
    _start_row, start_col = _sheet_origin(sheet)
    kinds: dict[int, Column] = {
        position: spec.column(key) for key, position in header.by_key.items()
    }
    width = len(header.names)
    for index, row in enumerate(sheet.iter_rows()):
        if index < data_start:
            continue
        values: list[str | None] = []
        issue_column: str | None = None
        issue: str | None = None
        issue_is_code = False
        cells = [""] * start_col + list(row)
        for position in range(width):
            raw = cells[position] if position < len(cells) else ""
            column = kinds.get(position)
            text, problem = cell_to_text(raw, column)
            text, too_long = clip_field(text, max_field_chars)
            problem = problem or too_long
            values.append(text)
            # One issue is kept per row. A problem outside the identifier columns
            # wins, because an unusable identifier is caught again by its check
            # while an unusable key or date would otherwise land.
            is_code = column is not None and column.kind == CODE
            if problem and (issue is None or (issue_is_code and not is_code)):
                issue_column, issue = header.names[position], problem
                issue_is_code = is_code
        if all(value is None for value in values):
            continue
        yield index + 1, values, issue_column, issue


def clip_field(text: str | None, max_chars: int) -> tuple[str | None, str | None]:
    """Cut a value past the field limit, so a huge cell never reaches DuckDB whole."""
    if text is None or len(text) <= max_chars:
        return text, None
    return text[:max_chars] + "…", (
        f"the value has {len(text)} characters, more than the limit of "
        f"{max_chars}; shorten it or split the text"
    )


def cell_to_text(value, column: Column | None) -> tuple[str | None, str | None]:
    """Turn one worksheet cell into text, with a reason when its value is unusable.

    Excel keeps 15 significant digits, so a code typed as a number with 16 or more
    digits has lost its tail and is refused, never rounded into a wrong identifier.
    """
    if value is None or value == "":
        return None, None
    if isinstance(value, str):
        return value, None
    if isinstance(value, bool):
        return ("TRUE" if value else "FALSE"), None
    if isinstance(value, dt.datetime):
        return value.date().isoformat(), None
    if isinstance(value, dt.date):
        return value.isoformat(), None
    if isinstance(value, (dt.time, dt.timedelta)):
        return str(value), None
    if isinstance(value, (int, float)):
        number = float(value)
        if math.isnan(number) or math.isinf(number):
            return str(value), None
        shown = f"{number:.15G}"
        if column is not None and (column.kind == CODE or column.key in KEY_TEXT):
            if not number.is_integer():
                return shown, (
                    f"{column.name_zh} is stored as the number {shown}, not as a code; "
                    "format the cell as Text and type the code again"
                )
            digits = str(int(number))
            if len(digits.lstrip("-")) >= 16:
                return shown, (
                    f"stored as a number ({shown}); Excel keeps only 15 significant "
                    "digits, so the last digits are lost and the code cannot be "
                    "recovered. Format the cell as Text and type the code again"
                )
            return digits, None
        if column is not None and column.kind == DATE:
            return (str(int(number)) if number.is_integer() else repr(number)), None
        if number.is_integer() and abs(number) < 1e15:
            return str(int(number)), None
        return repr(number) if isinstance(value, float) else str(value), None
    return str(value), None


def line_of_offset(path: Path, offset: int) -> int:
    """Return the 1-based line number of byte ``offset`` in a file."""
    line = 1
    with path.open("rb") as handle:
        remaining = offset
        while remaining > 0 and (chunk := handle.read(min(CHUNK, remaining))):
            line += chunk.count(b"\n")
            remaining -= len(chunk)
    return line
