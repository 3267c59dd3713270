"""Find delivered files under incoming/ and sort out the ones that are not deliveries.

Only regular files at ``incoming/<unit_id>/<YYYYMMDD>_<category>[_<text>].csv|xlsx``
are deliveries. Files still being written are skipped silently; everything else is
reported with what is wrong and left where it is. Nothing here moves, renames or
deletes a file, and symbolic links are never followed.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from credit_etl.registry import Unit
from credit_etl.schema import CATEGORY_WORDS

EXPECTED_PATTERN = "incoming/<unit_id>/<YYYYMMDD>_<category>[_<free text>].csv|xlsx"
EXTENSIONS = (".csv", ".xlsx")
_NAME = re.compile(r"^(\d{8})_(.+)$")
_DASHED_DATE = re.compile(r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}_")


@dataclass(frozen=True)
class Delivery:
    """A well-named file in a unit's folder, ready to be read."""

    path: Path
    rel_path: str
    unit_id: str
    received_date: dt.date
    category: str
    extension: str
    size_bytes: int
    mtime: float

    @property
    def sort_key(self) -> tuple:
        return (self.unit_id, self.received_date, Path(self.rel_path).name)


@dataclass(frozen=True)
class NameProblem:
    """A file that is not read, with what is wrong and the expected pattern."""

    path: Path
    rel_path: str
    problem: str
    expected: str = EXPECTED_PATTERN


@dataclass(frozen=True)
class Skipped:
    """A file not read yet because it is still being written or is temporary."""

    rel_path: str
    reason: str


@dataclass
class Scan:
    deliveries: list[Delivery]
    problems: list[NameProblem]
    skipped: list[Skipped]


def transient_reason(name: str) -> str | None:
    """Return why a file name marks a file still being written, or None."""
    if name.startswith("~$"):
        return "Excel lock file: the workbook is open on a clerk's computer"
    if name.startswith("."):
        return "hidden file"
    lowered = name.lower()
    if lowered.endswith(".part"):
        return "upload still in progress"
    if lowered.endswith(".tmp"):
        return "temporary file"
    return None


def _category_prefix(rest: str) -> str | None:
    """Return the category whose word is all of ``rest`` or its part before ``_``."""
    for word in sorted(CATEGORY_WORDS, key=len, reverse=True):
        if rest == word or rest.startswith(word + "_"):
            return CATEGORY_WORDS[word]
        lowered = rest.lower()
        if word.isascii() and (lowered == word or lowered.startswith(word + "_")):
            return CATEGORY_WORDS[word]
    return None


def parse_name(name: str) -> tuple[dt.date, str, str] | str:
    """Return (received date, category, extension), or what is wrong with the name."""
    stem, dot, extension = name.rpartition(".")
    extension = f".{extension.lower()}" if dot else ""
    if not dot:
        stem = name
    if extension not in EXTENSIONS:
        shown = extension or "(none)"
        return f"extension {shown} is not .csv or .xlsx"
    match = _NAME.match(stem)
    if not match:
        if _DASHED_DATE.match(stem):
            return "the received date is not written YYYYMMDD (for example 20181012)"
        if re.match(r"^\d{8}$", stem):
            return "the name has no category after the date"
        return "the name does not start with the received date YYYYMMDD"
    digits, rest = match.groups()
    try:
        received = dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return f"{digits} is not a real date"
    category = _category_prefix(rest)
    if category is None:
        word = rest.split("_", 1)[0]
        return (
            f"{word!r} is not a category word; use one of license, penalty, red_list, "
            "black_list, commitment, other or 行政许可, 行政处罚, 红名单, 黑名单, 信用承诺, 其他"
        )
    return received, category, extension


def scan_incoming(
    incoming: Path,
    units: list[Unit],
    settle_seconds: float = 5.0,
    now: float | None = None,
) -> Scan:
    """List deliveries, name problems and skipped files under ``incoming``."""
    now = time.time() if now is None else now
    scan = Scan([], [], [])
    if not incoming.is_dir():
        return scan
    unit_ids = {unit.unit_id for unit in units}
    by_name = {unit.name_zh: unit.unit_id for unit in units}

    for entry in sorted(os.scandir(incoming), key=lambda e: e.name):
        rel = entry.name
        if entry.is_symlink():
            scan.problems.append(
                NameProblem(Path(entry.path), rel, "symbolic link, not followed")
            )
        elif entry.is_dir(follow_symlinks=False):
            if entry.name in unit_ids:
                _scan_unit_dir(Path(entry.path), entry.name, scan, settle_seconds, now)
            else:
                hint = ""
                if entry.name in by_name:
                    hint = (
                        f"; it is the Chinese name of unit {by_name[entry.name]!r}, "
                        "use that id as the folder name"
                    )
                problem = f"folder {entry.name!r} is not a unit id{hint}"
                _report_tree(Path(entry.path), rel, problem, scan)
        elif entry.is_file(follow_symlinks=False):
            if transient_reason(entry.name):
                scan.skipped.append(Skipped(rel, transient_reason(entry.name)))
            else:
                scan.problems.append(
                    NameProblem(
                        Path(entry.path), rel, "the file is not inside a unit folder"
                    )
                )
    scan.deliveries.sort(key=lambda d: d.sort_key)
    return scan


def _scan_unit_dir(
    folder: Path, unit_id: str, scan: Scan, settle_seconds: float, now: float
) -> None:
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        rel = f"{unit_id}/{entry.name}"
        if entry.is_symlink():
            scan.problems.append(
                NameProblem(Path(entry.path), rel, "symbolic link, not followed")
            )
            continue
        if entry.is_dir(follow_symlinks=False):
            problem = (
                f"folder {entry.name!r} is not a unit id; files sit directly in "
                f"incoming/{unit_id}/"
            )
            _report_tree(Path(entry.path), rel, problem, scan)
            continue
        info = entry.stat(follow_symlinks=False)
        if not stat.S_ISREG(info.st_mode):
            scan.problems.append(
                NameProblem(Path(entry.path), rel, "not a regular file, not read")
            )
            continue
        reason = transient_reason(entry.name)
        if reason:
            scan.skipped.append(Skipped(rel, reason))
            continue
        parsed = parse_name(entry.name)
        if isinstance(parsed, str):
            scan.problems.append(NameProblem(Path(entry.path), rel, parsed))
            continue
        if now - info.st_mtime < settle_seconds:
            scan.skipped.append(
                Skipped(rel, f"modified less than {settle_seconds:g} s ago")
            )
            continue
        received, category, extension = parsed
        scan.deliveries.append(
            Delivery(
                path=Path(entry.path),
                rel_path=rel,
                unit_id=unit_id,
                received_date=received,
                category=category,
                extension=extension,
                size_bytes=info.st_size,
                mtime=info.st_mtime,
            )
        )


def _report_tree(folder: Path, rel: str, problem: str, scan: Scan) -> None:
    """Report every file below a folder that is not a unit folder, without following links."""
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            rel_path = f"{rel}/{path.relative_to(folder).as_posix()}"
            if transient_reason(name):
                scan.skipped.append(Skipped(rel_path, transient_reason(name)))
                continue
            scan.problems.append(NameProblem(path, rel_path, problem))
