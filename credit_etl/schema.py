"""Extract categories and their columns, after the national double-publicity standard.

Each column has a canonical key (its English alias), its v2.0 Chinese name, v1.0 and
other aliases, and a kind that decides how it is validated and stored.
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass, field

# Column kinds.
TEXT = "text"
CODE = "code"  # identifier folded and checked: uscc or id_number
DATE = "date"
AMOUNT = "amount"
COMMITMENT_TYPE = "commitment_type"

CATEGORIES = ("license", "penalty", "red_list", "black_list", "commitment", "other")
CATEGORY_WORDS = {
    "license": "license",
    "penalty": "penalty",
    "red_list": "red_list",
    "black_list": "black_list",
    "commitment": "commitment",
    "other": "other",
    "行政许可": "license",
    "行政处罚": "penalty",
    "红名单": "red_list",
    "黑名单": "black_list",
    "信用承诺": "commitment",
    "其他": "other",
}
CATEGORY_ZH = {
    "license": "行政许可",
    "penalty": "行政处罚",
    "red_list": "红名单",
    "black_list": "黑名单",
    "commitment": "信用承诺",
    "other": "其他",
}
DOUBLE_PUBLICITY = ("license", "penalty")
RED_BLACK = ("red_list", "black_list")

# Commitment types of the national standard; the value is what is stored.
COMMITMENT_TYPES = {
    "主动公示型": "主动公示型",
    "主动型": "主动公示型",
    "审批替代型": "审批替代型",
    "信用修复型": "信用修复型",
    "行业自律型": "行业自律型",
    "容缺受理型": "容缺受理型",
    "证明事项型": "证明事项型",
    "其他": "其他",
}
ANNEX4_TYPES = ("主动公示型", "信用修复型", "审批替代型", "行业自律型")


@dataclass(frozen=True)
class Column:
    key: str
    name_zh: str
    kind: str = TEXT
    aliases: tuple[str, ...] = ()
    personal: bool = False  # contains a natural person's name or ID number


@dataclass(frozen=True)
class CategorySpec:
    category: str
    table: str
    columns: tuple[Column, ...]
    required: tuple[str, ...]
    # Keys forming the natural key after the subject identifier, in order.
    key_columns: tuple[str, ...]
    # Date column checked against the received date and 1949-10-01.
    event_date: str | None
    # Alternative key used when this column is present and non-empty.
    preferred_key: str | None = None
    keeps_unknown_columns: bool = False
    by_name: dict[str, Column] = field(default_factory=dict, compare=False)

    def column(self, key: str) -> Column:
        for column in self.columns:
            if column.key == key:
                return column
        raise KeyError(key)


def _subject_columns(name_zh: str, aliases: tuple[str, ...] = ()) -> tuple[Column, ...]:
    return (
        Column("subject_name", name_zh, TEXT, aliases, personal=True),
        Column("subject_type", "行政相对人类别"),
        Column("uscc", "统一社会信用代码", CODE, ("行政相对人代码_1",)),
        Column("business_reg_number", "工商注册号", TEXT, ("行政相对人代码_2",)),
        Column("org_code", "组织机构代码", TEXT, ("行政相对人代码_3",)),
        Column("tax_reg_number", "税务登记号", TEXT, ("行政相对人代码_4",)),
        Column(
            "institution_cert_number", "事业单位证书号", TEXT, ("行政相对人代码_6",)
        ),
        Column("social_org_reg_number", "社会组织登记证号"),
        Column("legal_representative", "法定代表人", personal=True),
        Column("legal_representative_id_type", "法定代表人证件类型"),
        Column("legal_representative_id_number", "法定代表人证件号码", personal=True),
        Column("id_type", "证件类型"),
        Column(
            "id_number",
            "证件号码",
            CODE,
            ("行政相对人代码_5", "居民身份证号", "身份证号"),
            personal=True,
        ),
    )


_TAIL = (
    Column("source_unit", "数据来源单位"),
    Column("source_unit_uscc", "数据来源单位统一社会信用代码"),
    Column("remarks", "备注"),
)

LICENSE = CategorySpec(
    category="license",
    table="rec_license",
    columns=_subject_columns("行政相对人名称")
    + (
        Column("decision_title", "行政许可决定文书名称"),
        Column("decision_number", "行政许可决定文书号", TEXT, ("行政许可决定书文号",)),
        Column("license_type", "许可类别"),
        Column("certificate_name", "许可证书名称"),
        Column("license_number", "许可编号"),
        Column("license_content", "许可内容"),
        Column("decision_date", "许可决定日期", DATE),
        Column("valid_from", "有效期自", DATE),
        Column("valid_to", "有效期至", DATE),
        Column("authority", "许可机关"),
        Column("authority_uscc", "许可机关统一社会信用代码"),
        Column("status", "当前状态"),
    )
    + _TAIL,
    required=("subject_name", "decision_number", "decision_date"),
    key_columns=("decision_number",),
    event_date="decision_date",
)

PENALTY = CategorySpec(
    category="penalty",
    table="rec_penalty",
    columns=_subject_columns("行政相对人名称")
    + (
        Column("decision_number", "行政处罚决定书文号"),
        Column("violation_type", "违法行为类型"),
        Column("violation_facts", "违法事实"),
        Column("legal_basis", "处罚依据"),
        Column("penalty_type", "处罚类别"),
        Column("penalty_content", "处罚内容"),
        Column("fine_amount", "罚款金额（万元）", AMOUNT, ("罚款金额",)),
        Column(
            "confiscated_amount",
            "没收违法所得、没收非法财物的金额（万元）",
            AMOUNT,
            ("没收违法所得、没收非法财物的金额",),
        ),
        Column("suspended_licenses", "暂扣或吊销证照名称及编号"),
        Column("decision_date", "处罚决定日期", DATE),
        Column("penalty_valid_until", "处罚有效期", DATE),
        Column("publicity_until", "公示截止期", DATE),
        Column("authority", "处罚机关"),
        Column("authority_uscc", "处罚机关统一社会信用代码"),
    )
    + _TAIL,
    required=("subject_name", "decision_number", "decision_date"),
    key_columns=("decision_number",),
    event_date="decision_date",
)


def _list_spec(category: str) -> CategorySpec:
    return CategorySpec(
        category=category,
        table="rec_list",
        columns=_subject_columns("主体名称", ("行政相对人名称", "对象名称"))
        + (
            Column("list_name", "名单名称"),
            Column("listed_date", "认定日期", DATE, ("列入日期",)),
            Column("listing_authority", "认定部门"),
            Column("listing_basis", "认定依据"),
            Column("listing_reason", "列入名单事由"),
            Column("valid_to", "有效期至", DATE),
            Column("removal_date", "移出日期", DATE),
        )
        + _TAIL,
        required=("subject_name", "listed_date"),
        key_columns=("list_name", "listed_date"),
        event_date="listed_date",
    )


RED_LIST = _list_spec("red_list")
BLACK_LIST = _list_spec("black_list")

COMMITMENT = CategorySpec(
    category="commitment",
    table="rec_commitment",
    columns=_subject_columns("承诺人名称")
    + (
        Column("commitment_code", "承诺编码"),
        Column("commitment_type", "承诺类型", COMMITMENT_TYPE),
        Column("commitment_reason", "承诺事由"),
        Column("commitment_content", "承诺内容"),
        Column("commitment_date", "承诺作出日期", DATE),
        Column("accepting_unit", "承诺受理单位"),
        Column("fulfilment_status", "履行状态"),
        Column("publicity_type", "公开类型"),
    )
    + _TAIL,
    required=("subject_name", "commitment_type", "commitment_date"),
    key_columns=("commitment_type", "commitment_date"),
    event_date="commitment_date",
    preferred_key="commitment_code",
)

OTHER = CategorySpec(
    category="other",
    table="rec_other",
    columns=(
        Column("record_id", "记录编号"),
        Column("subject_name", "主体名称", TEXT, ("行政相对人名称",), personal=True),
    )
    + tuple(c for c in _subject_columns("主体名称") if c.key not in ("subject_name",))
    + (
        Column("info_type", "信息类别"),
        Column("info_date", "信息日期", DATE),
    )
    + _TAIL,
    required=(),
    key_columns=(),
    event_date=None,
    preferred_key="record_id",
    keeps_unknown_columns=True,
)

SPECS: dict[str, CategorySpec] = {
    "license": LICENSE,
    "penalty": PENALTY,
    "red_list": RED_LIST,
    "black_list": BLACK_LIST,
    "commitment": COMMITMENT,
    "other": OTHER,
}
TABLES = ("rec_license", "rec_penalty", "rec_list", "rec_commitment", "rec_other")


def fold_header(name: object) -> str:
    """Fold a header cell for matching: NFKC, no white space at all."""
    text = unicodedata.normalize("NFKC", str(name or ""))
    return "".join(text.split())


@functools.cache
def header_lookup(spec: CategorySpec) -> dict[str, Column]:
    """Map every accepted folded header name (v2.0, aliases, English) to its column.

    The map is built once per category and shared, so callers must not change it.
    """
    lookup: dict[str, Column] = {}
    for column in spec.columns:
        for name in (column.name_zh, column.key, *column.aliases):
            lookup.setdefault(fold_header(name), column)
            lookup.setdefault(fold_header(name).lower(), column)
    return lookup


def match_header(spec: CategorySpec, name: object) -> Column | None:
    folded = fold_header(name)
    lookup = header_lookup(spec)
    return lookup.get(folded) or lookup.get(folded.lower())


def storage_columns(table: str) -> list[Column]:
    """Return the union of columns stored in one records table, in a stable order."""
    seen: dict[str, Column] = {}
    for spec in SPECS.values():
        if spec.table != table:
            continue
        for column in spec.columns:
            seen.setdefault(column.key, column)
    return list(seen.values())
