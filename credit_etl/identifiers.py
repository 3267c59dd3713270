"""Subject identifiers: USCC (GB 32100-2015) and resident ID numbers (GB 11643-1999).

The Python functions serve the demo generator and tests; ingest validates in DuckDB
with the SQL macros built by ``sql_macros``, which implement the same rules.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata

USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
USCC_WEIGHTS = tuple(pow(3, i, 31) for i in range(17))
USCC_PLACEHOLDER = "00000000000000000X"
ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
ID_CHECK = "10X98765432"
# Letters a USCC never contains, and the digit a clerk probably meant.
USCC_LOOKALIKES = {"O": "0", "I": "1", "S": "5", "V": "U", "Z": "2"}

# Full-width ASCII (U+FF01..U+FF5E) to half-width, for SQL translate().
FULLWIDTH = "".join(chr(c) for c in range(0xFF01, 0xFF5F))
HALFWIDTH = "".join(chr(c) for c in range(0x21, 0x7F))


# White space removed by folding, the same set as the SQL macro ce_fold removes.
_SPACE = re.compile(
    r"[\s\u00a0\u1680\u2000-\u200b\u2028\u2029\u202f\u205f\u3000\ufeff]"
)


def fold(value: str) -> str:
    """Fold an identifier: NFKC, every white space removed, letters upper-cased."""
    text = unicodedata.normalize("NFKC", value)
    return _SPACE.sub("", text).upper()


def uscc_check_char(body17: str) -> str:
    total = sum(
        USCC_ALPHABET.index(char) * weight
        for char, weight in zip(body17, USCC_WEIGHTS, strict=True)
    )
    return USCC_ALPHABET[(31 - total % 31) % 31]


def id_check_char(body17: str) -> str:
    total = sum(
        int(char) * weight for char, weight in zip(body17, ID_WEIGHTS, strict=True)
    )
    return ID_CHECK[total % 11]


def uscc_problem(code: str) -> str | None:
    """Return why a folded USCC is invalid, or None when it is valid."""
    if code == USCC_PLACEHOLDER:
        return None
    if len(code) != 18:
        return f"has {len(code)} characters; a unified social credit code has 18"
    for char in code:
        if char not in USCC_ALPHABET:
            return f"contains {char}, which a unified social credit code never uses"
    expected = uscc_check_char(code[:17])
    if code[17] != expected:
        return f"check character is wrong (expected {expected}, found {code[17]})"
    return None


def id_problem(number: str) -> str | None:
    """Return why a folded resident ID number is invalid, or None when it is valid."""
    if len(number) == 15:
        if not number.isdigit():
            return "a 15-digit ID number contains only digits"
        return _birth_problem("19" + number[6:12])
    if len(number) != 18:
        return f"has {len(number)} characters; an ID number has 18 (or 15 before 1999)"
    if not number[:17].isdigit() or number[17] not in "0123456789X":
        return "an ID number has 17 digits and a final digit or X"
    birth = _birth_problem(number[6:14])
    if birth:
        return birth
    expected = id_check_char(number[:17])
    if number[17] != expected:
        return f"check digit is wrong (expected {expected}, found {number[17]})"
    return None


def _birth_problem(yyyymmdd: str) -> str | None:
    try:
        if int(yyyymmdd[:4]) < 1800:
            raise ValueError("no resident ID was issued for a birth before 1800")
        dt.date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:8]))
    except ValueError:
        return (
            f"birth date {yyyymmdd[:4]}-{yyyymmdd[4:6]}-{yyyymmdd[6:8]} "
            "inside the ID does not exist"
        )
    return None


def mask_id(value: str | None) -> str | None:
    """Show the first 6 and last 4 characters of an ID number, the rest as *."""
    if value is None:
        return None
    text = str(value)
    if len(text) <= 10:
        return "*" * len(text)
    return text[:6] + "*" * (len(text) - 10) + text[-4:]


def mask_name(value: str | None) -> str | None:
    """Keep the first character of a person's name."""
    if value is None:
        return None
    text = str(value)
    if not text:
        return text
    return text[0] + "*" * max(len(text) - 1, 1)
