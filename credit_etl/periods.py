"""Reporting quarters, their windows, deadlines and the bulletin's period words."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

QUARTER_WORDS = {1: "第一季度", 2: "第二季度", 3: "第三季度", 4: "第四季度"}
_LABEL = re.compile(r"^(\d{4})\s*-?\s*Q([1-4])$", re.IGNORECASE)


@dataclass(frozen=True, order=True)
class Quarter:
    """A calendar quarter of a reporting year."""

    year: int
    quarter: int

    def __post_init__(self) -> None:
        if self.quarter not in (1, 2, 3, 4):
            raise ValueError(f"quarter must be 1 to 4, got {self.quarter}")

    @classmethod
    def parse(cls, label: str) -> Quarter:
        """Parse a label such as ``2018Q4``."""
        match = _LABEL.match(label.strip())
        if not match:
            raise ValueError(
                f"invalid quarter {label!r}: write the year and quarter as 2018Q4"
            )
        return cls(int(match.group(1)), int(match.group(2)))

    @classmethod
    def containing(cls, day: dt.date) -> Quarter:
        return cls(day.year, (day.month - 1) // 3 + 1)

    @property
    def label(self) -> str:
        return f"{self.year}Q{self.quarter}"

    @property
    def start(self) -> dt.date:
        return dt.date(self.year, 3 * self.quarter - 2, 1)

    @property
    def end(self) -> dt.date:
        return self.next().start - dt.timedelta(days=1)

    @property
    def year_start(self) -> dt.date:
        return dt.date(self.year, 1, 1)

    @property
    def year_end(self) -> dt.date:
        return dt.date(self.year, 12, 31)

    def next(self) -> Quarter:
        if self.quarter == 4:
            return Quarter(self.year + 1, 1)
        return Quarter(self.year, self.quarter + 1)

    def previous(self) -> Quarter:
        if self.quarter == 1:
            return Quarter(self.year - 1, 4)
        return Quarter(self.year, self.quarter - 1)

    def deadline(self, day_of_month: int = 10) -> dt.date:
        """Return the delivery deadline: that day of the month after the quarter."""
        return self.next().start.replace(day=day_of_month)

    @property
    def quarter_word(self) -> str:
        return QUARTER_WORDS[self.quarter]

    @property
    def year_word(self) -> str:
        return f"{self.year}年"

    def __str__(self) -> str:
        return self.label
