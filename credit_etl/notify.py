"""Alerts on silent units, low timeliness and failed runs, sent by e-mail and webhook.

The channels are configured in one file, ``<data dir>/notify.toml``. Without that file,
or with a file that defines no channel, nothing is sent and the result carries a note
that explains why. There is no default server. Every section is optional::

    [email]
    host = "smtp.example.org"       # required in this section
    port = 587                      # default: 587 with STARTTLS, else 25
    starttls = true                 # default: true
    ca_file = "/etc/credit-etl/mail-ca.pem"    # optional; see below
    username = "credit-office"      # optional; log in after STARTTLS
    password_env = "CREDIT_ETL_SMTP_PASSWORD"   # or password = "..."
    sender = "credit-etl@example.org"
    recipients = ["office@example.org"]
    digest = false                  # true: one message lists every alert of a check
    timeout = 10                    # seconds per connection
    attempts = 3                    # tries per message, 1 to 10
    backoff_seconds = 1.0           # wait before try n+1: backoff_seconds * 2**(n-1)

    [webhook]
    url = "https://hooks.example.org/credit"
    headers = { Authorization = "Bearer ..." }
    timeout = 10
    attempts = 3
    backoff_seconds = 1.0

    [alerts]
    reminder_hours = 24             # alert a still-silent unit again after this long
    timeliness_threshold = 0.5      # fraction; without it no timeliness alerts

With ``starttls = true`` the notifier sends STARTTLS after EHLO and verifies the
server certificate against ``host`` before it logs in or sends. When the server does
not offer STARTTLS, neither the login nor a message is sent. ``ca_file`` is a PEM file
of certificate authorities, for a mail server whose certificate an internal authority
issued. When it is set, only those authorities are trusted and the system store is not
loaded. A relative path is read from the directory of notify.toml.

Each silent unit is alerted once per kind and quarter, and again only after the
reminder interval. The table ``alerts_sent`` in the warehouse stores when.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import os
import re
import smtplib
import ssl
import stat
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from fractions import Fraction
from http.client import HTTPException
from pathlib import Path
from typing import Any

import duckdb

from credit_etl.deadlines import SHANGHAI, DeadlineCheck, check_deadlines
from credit_etl.periods import Quarter
from credit_etl.registry import Unit, load_units
from credit_etl.settings import Settings

log = logging.getLogger(__name__)

CONFIG_NAME = "notify.toml"
ALERT_KINDS = ("silent_unit", "low_timeliness", "run_failed")
SUBJECT_PREFIX = "[credit-etl]"
USER_AGENT = "credit-etl notifier"

DEFAULT_REMINDER_INTERVAL = dt.timedelta(hours=24)
DEFAULT_TIMEOUT_SECONDS = 10.0
DEFAULT_ATTEMPTS = 3
DEFAULT_BACKOFF_SECONDS = 1.0
MAX_ATTEMPTS = 10
MAX_BACKOFF_SECONDS = 60.0
MAX_TIMEOUT_SECONDS = 300.0
# A run failure's error text is cut to this many characters before it leaves the
# product, so a long traceback cannot carry record values into a message.
MAX_ERROR_CHARS = 300

# Errors that a channel attempt can raise: socket and TLS errors (OSError, which
# smtplib.SMTPException and urllib.error.URLError subclass) and malformed HTTP replies.
CHANNEL_ERRORS = (OSError, HTTPException)


# --- configuration -------------------------------------------------------------------


class NotifyConfigError(ValueError):
    """Invalid ``notify.toml``. The message names the file, the key and the fix."""


@dataclass(frozen=True)
class EmailConfig:
    """SMTP server, credentials and addresses of the e-mail channel."""

    host: str
    port: int
    sender: str
    recipients: tuple[str, ...]
    starttls: bool = True
    # PEM file of the certificate authorities that STARTTLS trusts in place of the
    # system store; None trusts the system store.
    ca_file: Path | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    digest: bool = False
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    attempts: int = DEFAULT_ATTEMPTS
    backoff_seconds: float = DEFAULT_BACKOFF_SECONDS

    @property
    def target(self) -> str:
        """Server address for logs and results, without credentials."""
        return f"smtp://{self.host}:{self.port}"


@dataclass(frozen=True)
class WebhookConfig:
    """URL and extra request headers of the webhook channel."""

    url: str = field(repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    attempts: int = DEFAULT_ATTEMPTS
    backoff_seconds: float = DEFAULT_BACKOFF_SECONDS

    @property
    def target(self) -> str:
        """Scheme, host and port of the URL for logs and results.

        The path and query are left out because webhook services often put the access
        token there.
        """
        parts = urllib.parse.urlsplit(self.url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}"


@dataclass(frozen=True)
class NotifyConfig:
    """Channels and alert rules read from ``notify.toml``."""

    path: Path
    found: bool = False
    email: EmailConfig | None = None
    webhook: WebhookConfig | None = None
    reminder_interval: dt.timedelta = DEFAULT_REMINDER_INTERVAL
    timeliness_threshold: float | None = None

    @property
    def channels(self) -> list[str]:
        names = []
        if self.email is not None:
            names.append("email")
        if self.webhook is not None:
            names.append("webhook")
        return names

    def missing_channel_note(self) -> str:
        """Explain why nothing can be sent, naming the file to write."""
        if not self.found:
            return (
                f"no notification file {self.path}; create it with an [email] or "
                "[webhook] section to send alerts"
            )
        return (
            f"{self.path} defines neither [email] nor [webhook]; add one of them "
            "to send alerts"
        )


def config_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / CONFIG_NAME


def load_notify_config(
    data_dir: str | os.PathLike[str], environ: Mapping[str, str] | None = None
) -> NotifyConfig:
    """Read and validate ``<data_dir>/notify.toml``.

    A missing file gives a configuration without channels. ``environ`` (default
    ``os.environ``) resolves ``password_env``. Raises NotifyConfigError on an invalid
    file.
    """
    path = config_path(data_dir)
    if not path.exists():
        return NotifyConfig(path=path, found=False)
    if not path.is_file():
        raise NotifyConfigError(
            f"{path} is not a file; replace it with a TOML file or remove it"
        )
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise NotifyConfigError(
            f"{path}: invalid TOML: {error}; fix the syntax at that place"
        ) from None
    except UnicodeDecodeError:
        raise NotifyConfigError(
            f"{path}: the file is not valid UTF-8; save it as UTF-8"
        ) from None
    config = parse_notify_config(document, path, environ)
    _warn_if_password_readable(path, document)
    return config


def parse_notify_config(
    document: Mapping[str, Any],
    path: Path,
    environ: Mapping[str, str] | None = None,
) -> NotifyConfig:
    """Validate a parsed ``notify.toml``. ``path`` is only used in error messages."""
    environ = os.environ if environ is None else environ
    sections = {"email", "webhook", "alerts"}
    for name, value in document.items():
        if name not in sections:
            raise NotifyConfigError(
                f"{path}: unknown section or key {name!r}; the file may contain only "
                "the sections [email], [webhook] and [alerts]"
            )
        if not isinstance(value, dict):
            raise NotifyConfigError(
                f"{path}: {name} must be a section, got {_toml_type(value)}; write it "
                f"as [{name}] followed by its keys"
            )

    email = None
    if "email" in document:
        email = _parse_email(_Section(path, "email", document["email"]), environ)
    webhook = None
    if "webhook" in document:
        webhook = _parse_webhook(_Section(path, "webhook", document["webhook"]))
    reminder_interval = DEFAULT_REMINDER_INTERVAL
    threshold = None
    if "alerts" in document:
        reminder_interval, threshold = _parse_alerts(
            _Section(path, "alerts", document["alerts"])
        )
    return NotifyConfig(
        path=path,
        found=True,
        email=email,
        webhook=webhook,
        reminder_interval=reminder_interval,
        timeliness_threshold=threshold,
    )


class _Section:
    """Typed reader of one table of notify.toml whose errors name the file and key."""

    def __init__(self, path: Path, name: str, table: dict[str, Any]) -> None:
        self.path = path
        self.name = name
        self.table = table

    def error(self, key: str, problem: str) -> NotifyConfigError:
        return NotifyConfigError(f"{self.path}: [{self.name}] {key} {problem}")

    def reject_unknown(self, allowed: Iterable[str]) -> None:
        allowed = sorted(allowed)
        for key in self.table:
            if key not in allowed:
                raise self.error(
                    key,
                    f"is not a known key; the section [{self.name}] accepts "
                    f"{', '.join(allowed)}",
                )

    def string(self, key: str, example: str, required: bool = False) -> str | None:
        if key not in self.table:
            if required:
                raise self.error(key, f"is missing; add it, for example {example}")
            return None
        value = self.table[key]
        if not isinstance(value, str):
            raise self.error(
                key, f"must be a string, got {_toml_type(value)}; for example {example}"
            )
        if not value.strip():
            raise self.error(key, f"is empty; for example {example}")
        if any(char in value for char in "\r\n\0"):
            raise self.error(key, "contains a line break or NUL; remove it")
        return value.strip()

    def boolean(self, key: str, default: bool) -> bool:
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise self.error(
                key, f"must be true or false, got {_toml_type(value)} {value!r}"
            )
        return value

    def integer(self, key: str, default: int, minimum: int, maximum: int) -> int:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(
                key, f"must be a whole number, got {_toml_type(value)} {value!r}"
            )
        if not minimum <= value <= maximum:
            raise self.error(key, f"must be from {minimum} to {maximum}, got {value}")
        return value

    def number(
        self,
        key: str,
        default: float | None,
        minimum: float,
        maximum: float,
        unit: str,
        allow_minimum: bool = True,
    ) -> float | None:
        value = self.table.get(key, default)
        if value is None:
            return None
        if allow_minimum:
            allowed = f"from {minimum:g} to {maximum:g} {unit}"
            in_range = minimum <= value <= maximum if _is_number(value) else False
        else:
            allowed = f"greater than {minimum:g} and at most {maximum:g} {unit}"
            in_range = minimum < value <= maximum if _is_number(value) else False
        if not _is_number(value):
            raise self.error(
                key, f"must be a number {allowed}, got {_toml_type(value)} {value!r}"
            )
        if not in_range:
            raise self.error(key, f"must be {allowed}, got {value!r}")
        return float(value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _toml_type(value: object) -> str:
    names = {
        bool: "a boolean",
        str: "a string",
        int: "an integer",
        float: "a float",
        list: "an array",
        dict: "a table",
    }
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    return f"a {type(value).__name__}"


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ADDRESS = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;]+$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_EMAIL_KEYS = (
    "host",
    "port",
    "starttls",
    "ca_file",
    "username",
    "password",
    "password_env",
    "sender",
    "recipients",
    "digest",
    "timeout",
    "attempts",
    "backoff_seconds",
)
_WEBHOOK_KEYS = ("url", "headers", "timeout", "attempts", "backoff_seconds")
# The notifier sets these itself because the body is always JSON of known length.
_RESERVED_HEADERS = ("content-type", "content-length", "host")


def _parse_email(section: _Section, environ: Mapping[str, str]) -> EmailConfig:
    section.reject_unknown(_EMAIL_KEYS)
    host = _parse_host(section)
    starttls = section.boolean("starttls", True)
    port = section.integer("port", 587 if starttls else 25, 1, 65535)
    ca_file = _parse_ca_file(section, starttls)
    sender = section.string("sender", '"credit-etl@example.org"', required=True)
    _check_address(section, "sender", sender)
    recipients = _parse_recipients(section)

    username = section.string("username", '"credit-office"')
    password = _parse_password(section, environ)
    if username and password is None:
        raise section.error(
            "username",
            "is set but no password is; add password_env naming the environment "
            "variable that holds the password",
        )
    if password is not None and not username:
        raise section.error(
            "username",
            "is missing but a password is set; add the login name or remove the "
            "password",
        )
    if username and not starttls:
        log.warning(
            "%s: [email] logs in without STARTTLS, so the password crosses the "
            "network in clear text; set starttls = true unless the server is local",
            section.path,
        )

    return EmailConfig(
        host=host,
        port=port,
        sender=sender,
        recipients=recipients,
        starttls=starttls,
        ca_file=ca_file,
        username=username,
        password=password,
        digest=section.boolean("digest", False),
        **_parse_retry_keys(section),
    )


def _parse_host(section: _Section) -> str:
    host = section.string("host", '"smtp.example.org"', required=True)
    if any(char.isspace() for char in host) or "/" in host:
        raise section.error("host", f"{host!r} is not a host name or IP address")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise section.error(
                "host",
                f"{host!r} contains a colon; put the port in the key port, for "
                "example port = 587",
            ) from None
    return host


def _parse_ca_file(section: _Section, starttls: bool) -> Path | None:
    text = section.string("ca_file", '"/etc/credit-etl/mail-ca.pem"')
    if text is None:
        return None
    if not starttls:
        raise section.error(
            "ca_file",
            "is set but starttls = false, and the certificate authorities in ca_file "
            "are used only for STARTTLS; set starttls = true or remove ca_file",
        )
    # Relative to notify.toml, so that the UI, the daemon and the command line find the
    # same file whatever their working directory.
    path = section.path.parent / text
    fix = (
        "give the path of a PEM file with the certificate of the authority that issued "
        "the mail server's certificate"
    )
    try:
        # Loading the file the way the sender does checks that it exists, is readable
        # and contains at least one PEM certificate.
        ssl.create_default_context(cafile=str(path))
    except FileNotFoundError:
        raise section.error("ca_file", f"{str(path)!r} was not found; {fix}") from None
    except IsADirectoryError:
        raise section.error("ca_file", f"{str(path)!r} is a directory; {fix}") from None
    except ssl.SSLError:
        raise section.error(
            "ca_file", f"{str(path)!r} contains no PEM certificate; {fix}"
        ) from None
    except OSError as error:
        raise section.error(
            "ca_file",
            f"{str(path)!r} cannot be read ({error.strerror}); make it readable by the "
            "user that runs credit-etl",
        ) from None
    return path


def _check_address(section: _Section, key: str, text: str) -> None:
    _name, address = parseaddr(text)
    if "," in text or not _ADDRESS.match(address):
        raise section.error(
            key,
            f"contains an invalid e-mail address {text!r}; write one address such as "
            '"office@example.org" or "Credit Office <office@example.org>" per string',
        )


def _parse_recipients(section: _Section) -> tuple[str, ...]:
    example = '["office@example.org"]'
    if "recipients" not in section.table:
        raise section.error("recipients", f"is missing; add it, for example {example}")
    value = section.table["recipients"]
    if not isinstance(value, list) or not value:
        raise section.error(
            "recipients",
            f"must be a non-empty array of addresses, got {_toml_type(value)}; for "
            f"example {example}",
        )
    recipients = []
    for item in value:
        if not isinstance(item, str):
            raise section.error(
                "recipients", f"must contain strings only, got {_toml_type(item)}"
            )
        _check_address(section, "recipients", item.strip())
        recipients.append(item.strip())
    return tuple(recipients)


def _parse_password(section: _Section, environ: Mapping[str, str]) -> str | None:
    # Errors here never quote the password, only its type or the variable's name.
    has_password = "password" in section.table
    has_env = "password_env" in section.table
    if has_password and has_env:
        raise section.error(
            "password",
            "and password_env are both set; keep password_env and remove password",
        )
    if has_password:
        value = section.table["password"]
        if not isinstance(value, str) or not value:
            raise section.error(
                "password",
                f"must be a non-empty string, got {_toml_type(value)}; better, remove "
                "it and name an environment variable in password_env",
            )
        return value
    if not has_env:
        return None
    variable = section.string("password_env", '"CREDIT_ETL_SMTP_PASSWORD"')
    if not _ENV_NAME.match(variable):
        raise section.error(
            "password_env",
            f"{variable!r} is not an environment variable name; use letters, digits "
            "and underscores, for example CREDIT_ETL_SMTP_PASSWORD",
        )
    password = environ.get(variable)
    if not password:
        raise section.error(
            "password_env",
            f"names the environment variable {variable}, which is not set or empty; "
            "export it in the environment of the process that sends alerts",
        )
    return password


def _parse_retry_keys(section: _Section) -> dict[str, Any]:
    return {
        "timeout": section.number(
            "timeout",
            DEFAULT_TIMEOUT_SECONDS,
            0,
            MAX_TIMEOUT_SECONDS,
            "seconds",
            allow_minimum=False,
        ),
        "attempts": section.integer("attempts", DEFAULT_ATTEMPTS, 1, MAX_ATTEMPTS),
        "backoff_seconds": section.number(
            "backoff_seconds",
            DEFAULT_BACKOFF_SECONDS,
            0,
            MAX_BACKOFF_SECONDS,
            "seconds",
        ),
    }


def _parse_webhook(section: _Section) -> WebhookConfig:
    section.reject_unknown(_WEBHOOK_KEYS)
    url = section.string("url", '"https://hooks.example.org/credit"', required=True)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # The URL is not quoted because its path or query may hold an access token.
        raise section.error(
            "url",
            "must be an absolute http:// or https:// URL with a host, for example "
            '"https://hooks.example.org/credit"',
        )
    if parts.username or parts.password:
        raise section.error(
            "url",
            "contains a user name or password; remove it from the URL and set an "
            "Authorization header in headers instead",
        )
    if any(char.isspace() for char in url):
        raise section.error("url", "contains white space; percent-encode it as %20")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise section.error("url", "has an invalid port; use a number from 1 to 65535")
    return WebhookConfig(
        url=url, headers=_parse_headers(section), **_parse_retry_keys(section)
    )


def _parse_headers(section: _Section) -> dict[str, str]:
    value = section.table.get("headers", {})
    if not isinstance(value, dict):
        raise section.error(
            "headers",
            f"must be a table of names and strings, got {_toml_type(value)}; for "
            'example headers = { Authorization = "Bearer ..." }',
        )
    headers = {}
    for name, text in value.items():
        # Header values are never quoted in errors because they often hold tokens.
        if not _HEADER_NAME.match(name):
            raise section.error("headers", f"contains an invalid header name {name!r}")
        if name.lower() in _RESERVED_HEADERS:
            raise section.error(
                "headers",
                f"sets {name}, which the notifier sets itself; remove it",
            )
        if not isinstance(text, str) or any(char in text for char in "\r\n\0"):
            raise section.error(
                "headers",
                f"value of {name} must be a string on one line, got {_toml_type(text)}",
            )
        headers[name] = text
    return headers


def _parse_alerts(section: _Section) -> tuple[dt.timedelta, float | None]:
    section.reject_unknown(("reminder_hours", "timeliness_threshold"))
    hours = section.number(
        "reminder_hours",
        DEFAULT_REMINDER_INTERVAL.total_seconds() / 3600,
        0,
        24 * 366,
        "hours",
        allow_minimum=False,
    )
    threshold = section.number(
        "timeliness_threshold",
        None,
        0,
        1,
        "as a fraction (0.5 is 50 %)",
        allow_minimum=False,
    )
    return dt.timedelta(hours=hours), threshold


def _warn_if_password_readable(path: Path, document: Mapping[str, Any]) -> None:
    email = document.get("email")
    if not isinstance(email, dict) or "password" not in email:
        return
    if path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning(
            "%s contains a password and other users can read it; run chmod 600 on "
            "it or move the password to an environment variable named by password_env",
            path,
        )


# --- alerts --------------------------------------------------------------------------


@dataclass
class Alert:
    """One condition to report: a silent unit, low timeliness or a failed run.

    ``message`` and ``details`` go to e-mail and webhooks, so they carry unit names,
    dates and counts only, never record values. ``details`` must be JSON-compatible.
    """

    kind: str
    quarter: str | None
    unit_id: str | None
    unit_name: str | None
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ALERT_KINDS:
            raise ValueError(
                f"invalid alert kind {self.kind!r}; use one of {', '.join(ALERT_KINDS)}"
            )
        if self.kind != "run_failed" and not (self.quarter and self.unit_id):
            raise ValueError(f"a {self.kind} alert needs a quarter and a unit_id")

    @property
    def state_key(self) -> tuple[str, str, str] | None:
        """The ``alerts_sent`` key, or None for run failures, which are not repeated."""
        if self.kind == "run_failed":
            return None
        return (self.kind, self.quarter, self.unit_id)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def subject(self) -> str:
        """E-mail subject naming the kind, the quarter and the unit (or the job)."""
        words = [SUBJECT_PREFIX, self.kind]
        if self.quarter:
            words.append(self.quarter)
        if self.unit_id:
            target = " ".join(part for part in (self.unit_id, self.unit_name) if part)
        else:
            target = f"job {self.details.get('job', 'unknown')}"
        return f"{' '.join(words)}: {target}"


def silent_unit_alerts(check: DeadlineCheck) -> list[Alert]:
    """Build one ``silent_unit`` alert per silent unit once the deadline has passed.

    Returns no alerts before the deadline, because units that have not delivered yet
    still have time.
    """
    if not check.passed:
        return []
    quarter = check.quarter
    deadline = check.deadline.astimezone(SHANGHAI)
    deadline_text = f"{deadline:%Y-%m-%d %H:%M:%S}"
    alerts = []
    for unit in check.silent:
        message = (
            f"{unit.name_zh}在截止时间 {deadline_text} 前未报送"
            f"{quarter.year_word}{quarter.quarter_word}的任何数据文件。 "
            f"{unit.name_en or unit.unit_id} ({unit.unit_id}) delivered no file for "
            f"{quarter.label} by the deadline {deadline_text} Asia/Shanghai."
        )
        alerts.append(
            Alert(
                kind="silent_unit",
                quarter=quarter.label,
                unit_id=unit.unit_id,
                unit_name=unit.name_zh,
                message=message,
                details={
                    "name_en": unit.name_en,
                    "unit_kind": unit.kind,
                    "deadline": deadline.isoformat(),
                    "checked_at": check.checked_at.isoformat(),
                },
            )
        )
    return alerts


def low_timeliness_alerts(
    con: duckdb.DuckDBPyConnection,
    quarter: Quarter,
    threshold: float,
    units: Sequence[Unit] | None = None,
) -> list[Alert]:
    """Build a ``low_timeliness`` alert for each unit whose quarter rate is below ``threshold``.

    The rate is ``dp_quarter_timely / dp_quarter_increment`` from ``unit_figures``,
    compared exactly as fractions. ``threshold`` is a fraction from 0 (exclusive) to 1.
    Units without double-publicity records in the quarter have no rate and get no
    alert. Returns no alerts when the quarter has no figures yet.
    """
    if not 0 < threshold <= 1:
        raise ValueError(
            f"invalid timeliness threshold {threshold!r}; give a fraction greater than "
            "0 and at most 1, for example 0.5 for 50 %"
        )
    if not _table_exists(con, "unit_figures"):
        return []
    rows = con.execute(
        """SELECT unit_id, dp_quarter_increment, dp_quarter_timely FROM unit_figures
           WHERE period = ? AND dp_quarter_increment > 0 ORDER BY unit_id""",
        [quarter.label],
    ).fetchall()
    names = {unit.unit_id: unit for unit in (units or load_units())}
    # str() first, so that 0.7 means exactly 7/10 and not the nearest binary float.
    limit = Fraction(str(threshold))
    threshold_text = f"{float(limit * 100):g}%"
    alerts = []
    for unit_id, increment, timely in rows:
        if Fraction(timely, increment) >= limit:
            continue
        unit = names.get(unit_id)
        name_zh = unit.name_zh if unit else unit_id
        name_en = (unit.name_en if unit else "") or unit_id
        # Truncated like the annexes' rates, so a rate just below 50 % never reads 50.00 %.
        rate_text = f"{timely * 10000 // increment / 100:.2f}%"
        message = (
            f"{name_zh} {quarter.year_word}{quarter.quarter_word}双公示及时率 "
            f"{rate_text}（{timely}/{increment}），低于 {threshold_text}。 "
            f"{name_en} ({unit_id}): double-publicity timeliness for {quarter.label} "
            f"is {rate_text} ({timely} of {increment} records timely), below the "
            f"threshold of {threshold_text}."
        )
        alerts.append(
            Alert(
                kind="low_timeliness",
                quarter=quarter.label,
                unit_id=unit_id,
                unit_name=name_zh,
                message=message,
                details={
                    "name_en": name_en,
                    "dp_quarter_increment": int(increment),
                    "dp_quarter_timely": int(timely),
                    "timeliness": timely / increment,
                    "threshold": float(threshold),
                },
            )
        )
    return alerts


def run_failed_alert(
    job_name: str, run_id: str, error: str, quarter: str | None = None
) -> Alert:
    """Build a ``run_failed`` alert for a failed Dagster run.

    Pass the error's type and message, not a traceback. Only the first line is kept,
    cut to MAX_ERROR_CHARS characters.
    """
    first_line = (error.strip().splitlines() or [""])[0][:MAX_ERROR_CHARS]
    where = f" ({quarter})" if quarter else ""
    message = (
        f"作业 {job_name}{where} 运行失败：{first_line}。 "
        f"Run {run_id} of job {job_name}{where} failed: {first_line}"
    )
    return Alert(
        kind="run_failed",
        quarter=quarter,
        unit_id=None,
        unit_name=None,
        message=message,
        details={"job": job_name, "run_id": run_id, "error": first_line},
    )


# --- alert state ---------------------------------------------------------------------

ALERTS_SENT_DDL = """
CREATE TABLE IF NOT EXISTS alerts_sent (
    kind VARCHAR NOT NULL,
    quarter VARCHAR NOT NULL,
    unit_id VARCHAR NOT NULL,
    first_sent_at TIMESTAMP NOT NULL,  -- UTC
    last_sent_at TIMESTAMP NOT NULL,   -- UTC
    times_sent INTEGER NOT NULL,
    PRIMARY KEY (kind, quarter, unit_id)
)
"""


def ensure_alert_table(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(ALERTS_SENT_DDL)


def due_alerts(
    con: duckdb.DuckDBPyConnection,
    alerts: Iterable[Alert],
    now: dt.datetime,
    reminder_interval: dt.timedelta,
) -> list[Alert]:
    """Return the alerts never sent, or last sent at least ``reminder_interval`` ago.

    Run failures are always due. Of several alerts with one key, only the first is
    returned. Nothing is recorded. ``now`` without a time zone is read as
    Asia/Shanghai.
    """
    if reminder_interval < dt.timedelta(0):
        raise ValueError(
            f"invalid reminder interval {reminder_interval}; it must not be negative"
        )
    ensure_alert_table(con)
    moment = _utc_naive(now)
    due = []
    seen: set[tuple[str, str, str]] = set()
    for alert in alerts:
        key = alert.state_key
        if key is None:
            due.append(alert)
            continue
        if key in seen:
            continue
        seen.add(key)
        row = con.execute(
            """SELECT last_sent_at FROM alerts_sent
               WHERE kind = ? AND quarter = ? AND unit_id = ?""",
            list(key),
        ).fetchone()
        if row is None or moment - row[0] >= reminder_interval:
            due.append(alert)
    return due


def record_sent(
    con: duckdb.DuckDBPyConnection, alerts: Iterable[Alert], now: dt.datetime
) -> int:
    """Store in ``alerts_sent`` that the alerts were sent at ``now`` and return how many.

    Run failures are not stored.
    """
    ensure_alert_table(con)
    moment = _utc_naive(now)
    keys = [alert.state_key for alert in alerts if alert.state_key is not None]
    if not keys:
        return 0
    con.execute("BEGIN TRANSACTION")
    try:
        for kind, quarter, unit_id in keys:
            con.execute(
                """INSERT INTO alerts_sent
                       (kind, quarter, unit_id, first_sent_at, last_sent_at, times_sent)
                   VALUES (?, ?, ?, ?, ?, 1)
                   ON CONFLICT (kind, quarter, unit_id) DO UPDATE SET
                       last_sent_at = excluded.last_sent_at,
                       times_sent = alerts_sent.times_sent + 1""",
                [kind, quarter, unit_id, moment, moment],
            )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return len(keys)


def record_and_filter(
    con: duckdb.DuckDBPyConnection,
    alerts: Iterable[Alert],
    now: dt.datetime,
    reminder_interval: dt.timedelta,
) -> list[Alert]:
    """Return the due alerts and record them as sent at ``now``.

    Use this when the caller sends every returned alert. ``notify_deadlines`` records
    only the alerts that a channel accepted, so that a failed send is retried at the
    next check.
    """
    due = due_alerts(con, alerts, now, reminder_interval)
    record_sent(con, due, now)
    return due


def _utc_naive(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=SHANGHAI)
    return moment.astimezone(dt.UTC).replace(tzinfo=None)


def _table_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    row = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [name]
    ).fetchone()
    return bool(row[0])


# --- sending -------------------------------------------------------------------------


@dataclass
class ChannelResult:
    """Outcome of one channel: messages sent, alerts delivered and failed attempts."""

    channel: str
    target: str
    sent: int = 0  # e-mail messages or webhook requests accepted by the server
    failed: int = 0  # messages or requests still undelivered after the last attempt
    delivered: set[int] = field(default_factory=set)  # indexes into send()'s alerts
    errors: list[str] = field(default_factory=list)  # one entry per failed attempt

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "sent": self.sent,
            "failed": self.failed,
            "alerts_delivered": len(self.delivered),
            "errors": list(self.errors),
        }


@dataclass
class SendResult:
    """Outcome of ``send``: one result per configured channel and an optional note."""

    channels: dict[str, ChannelResult] = field(default_factory=dict)
    note: str | None = None

    @property
    def delivered(self) -> list[int]:
        """Indexes of the alerts that at least one channel delivered."""
        indexes: set[int] = set()
        for result in self.channels.values():
            indexes |= result.delivered
        return sorted(indexes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "channels": {name: r.as_dict() for name, r in self.channels.items()},
            "note": self.note,
        }


def send(alerts: Sequence[Alert], config: NotifyConfig | None) -> SendResult:
    """Send the alerts over every configured channel and return a result per channel.

    E-mail sends one message per alert, or one digest of all of them. The webhook
    receives one JSON POST ``{"alerts": [...]}``. A failed attempt is retried up to the
    channel's ``attempts`` with doubling backoff and logged with the target and the
    error. Send errors are returned, not raised, and one channel's failure never
    stops the other.
    """
    alerts = list(alerts)
    if not alerts:
        return SendResult(note="no alerts to send")
    if config is None or not config.channels:
        note = (
            config.missing_channel_note()
            if config is not None
            else "no notification configuration given"
        )
        note = f"{note}; {len(alerts)} alerts not sent"
        log.warning("%s", note)
        return SendResult(note=note)

    result = SendResult()
    if config.email is not None:
        email = ChannelResult("email", config.email.target)
        _run_channel(email, lambda: _send_email(alerts, config.email, email))
        result.channels["email"] = email
    if config.webhook is not None:
        webhook = ChannelResult("webhook", config.webhook.target)
        _run_channel(webhook, lambda: _post_webhook(alerts, config.webhook, webhook))
        result.channels["webhook"] = webhook
    return result


def _run_channel(result: ChannelResult, deliver: Callable[[], None]) -> None:
    try:
        deliver()
    except Exception as error:
        # A bug in one channel (for example a header the e-mail library rejects)
        # must not stop the other channel, so it is logged and returned here.
        log.exception("%s to %s failed unexpectedly", result.channel, result.target)
        result.errors.append(f"unexpected {type(error).__name__}: {error}")
        result.failed = max(result.failed, 1)


def _attempt_with_retries(
    result: ChannelResult,
    attempts: int,
    backoff_seconds: float,
    attempt: Callable[[], None],
    is_transient: Callable[[BaseException], bool],
    describe: Callable[[BaseException], str] | None = None,
) -> bool:
    """Call ``attempt`` until it succeeds, at most ``attempts`` times, and return success.

    A permanent error, as ``is_transient`` decides, ends the tries at once. ``describe``
    (default ``_describe``) turns an error into the text that is logged and returned.
    """
    describe = describe or _describe
    for number in range(1, attempts + 1):
        try:
            attempt()
            return True
        except CHANNEL_ERRORS as error:
            retry = is_transient(error) and number < attempts
            log.warning(
                "%s to %s failed (attempt %d of %d): %s; %s",
                result.channel,
                result.target,
                number,
                attempts,
                describe(error),
                "retrying" if retry else "giving up",
            )
            result.errors.append(f"attempt {number}: {describe(error)}")
            if not retry:
                return False
            time.sleep(backoff_seconds * 2 ** (number - 1))
    return False


def _describe(error: BaseException) -> str:
    if isinstance(error, smtplib.SMTPResponseException):
        text = error.smtp_error
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return f"{type(error).__name__}: {error.smtp_code} {text}"
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return f"{type(error.reason).__name__}: {error.reason}"
    return f"{type(error).__name__}: {error}"


# --- e-mail --------------------------------------------------------------------------


def _send_email(
    alerts: list[Alert], config: EmailConfig, result: ChannelResult
) -> None:
    if config.digest:
        pending = [(set(range(len(alerts))), _digest_message(alerts, config))]
    else:
        pending = [
            ({index}, _alert_message(alert, config))
            for index, alert in enumerate(alerts)
        ]

    context = None
    if config.starttls:
        try:
            context = _tls_context(config)
        except OSError as error:
            # Loading notify.toml made the same call, so an error here means that
            # ca_file was removed or changed since.
            source = f"ca_file {config.ca_file}" if config.ca_file else "TLS context"
            problem = f"{source} could not be loaded: {_describe(error)}"
            log.error("email to %s: %s", config.target, problem)
            result.errors.append(problem)
            result.failed = len(pending)
            return

    def attempt() -> None:
        # One connection per attempt; messages accepted before an error are not sent
        # again on the next attempt.
        with smtplib.SMTP(config.host, config.port, timeout=config.timeout) as smtp:
            smtp.ehlo()
            if context is not None:
                _start_tls(smtp, config, context)
            if config.username:
                smtp.login(config.username, config.password or "")
            while pending:
                indexes, message = pending[0]
                refused = smtp.send_message(message)
                if refused:
                    result.errors.append(
                        f"recipients refused: {', '.join(sorted(refused))}"
                    )
                    log.warning(
                        "email to %s: recipients refused %s",
                        config.target,
                        sorted(refused),
                    )
                pending.pop(0)
                result.sent += 1
                result.delivered |= indexes

    _attempt_with_retries(
        result,
        config.attempts,
        config.backoff_seconds,
        attempt,
        _smtp_error_is_transient,
        lambda error: _describe_smtp_error(error, config),
    )
    result.failed = len(pending)
    if pending:
        log.error(
            "email to %s: %d of %d messages not sent",
            config.target,
            len(pending),
            result.sent + len(pending),
        )


def _tls_context(config: EmailConfig) -> ssl.SSLContext:
    """Create the client context for STARTTLS, which verifies the certificate and host.

    With ``ca_file``, ``create_default_context`` loads only that file and not the
    system store.
    """
    cafile = str(config.ca_file) if config.ca_file is not None else None
    return ssl.create_default_context(cafile=cafile)


def _start_tls(
    smtp: smtplib.SMTP, config: EmailConfig, context: ssl.SSLContext
) -> None:
    # smtplib.SMTP.starttls raises the same error type, but its message does not say
    # that nothing was sent or what to change.
    if not smtp.has_extn("starttls"):
        raise smtplib.SMTPNotSupportedError(
            f"{config.target} does not offer STARTTLS, so nothing was sent; set port to "
            "the server's submission port (usually 587) or ask its administrator to "
            "enable STARTTLS"
        )
    smtp.starttls(context=context)
    smtp.ehlo()


# OpenSSL verification codes (include/openssl/x509_vfy.h) of a certificate whose
# issuer is not among the trusted authorities, and of a certificate for another name.
_X509_UNTRUSTED_ISSUER_CODES = (2, 18, 19, 20, 21)
_X509_NAME_MISMATCH_CODES = (62, 64)


def _describe_smtp_error(error: BaseException, config: EmailConfig) -> str:
    """Describe an SMTP error, with the fix for a server certificate that failed."""
    if not isinstance(error, ssl.SSLCertVerificationError):
        return _describe(error)
    reason = error.verify_message or str(error)
    if error.verify_code in _X509_NAME_MISMATCH_CODES:
        fix = "set host in [email] of notify.toml to a name that the certificate lists"
    elif error.verify_code in _X509_UNTRUSTED_ISSUER_CODES and config.ca_file is None:
        fix = (
            "if an internal certificate authority issued the mail server's "
            "certificate, set ca_file in [email] of notify.toml to a PEM file with "
            "that authority's certificate"
        )
    elif error.verify_code in _X509_UNTRUSTED_ISSUER_CODES:
        fix = (
            f"add the certificate of the authority that issued the mail server's "
            f"certificate to ca_file {config.ca_file}"
        )
    else:
        fix = "ask the mail server's administrator to replace its certificate"
    return (
        f"{type(error).__name__}: the server certificate of {config.host} could not "
        f"be verified: {reason}; {fix}"
    )


def _smtp_error_is_transient(error: BaseException) -> bool:
    """Return False for errors that a retry cannot fix: TLS, login and 5xx replies."""
    if isinstance(error, ssl.SSLCertVerificationError | smtplib.SMTPNotSupportedError):
        return False
    if isinstance(error, smtplib.SMTPResponseException):
        return 400 <= error.smtp_code < 500
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        return all(400 <= code < 500 for code, _text in error.recipients.values())
    return True


def _new_message(config: EmailConfig, subject: str, body: str) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = config.sender
    message["To"] = ", ".join(config.recipients)
    message["Date"] = formatdate(localtime=True)
    # The sender's domain, because make_msgid's default looks up this host's FQDN.
    domain = parseaddr(config.sender)[1].rpartition("@")[2]
    message["Message-ID"] = make_msgid(domain=domain)
    # Base64 keeps the Chinese text intact through servers without 8BITMIME.
    message.set_content(body, charset="utf-8", cte="base64")
    return message


def _alert_lines(alert: Alert) -> list[str]:
    lines = [
        alert.message,
        "",
        f"kind: {alert.kind}",
        f"quarter: {alert.quarter or '-'}",
    ]
    if alert.unit_id:
        lines.append(f"unit: {alert.unit_id} {alert.unit_name or ''}".rstrip())
    lines.extend(f"{key}: {value}" for key, value in alert.details.items())
    return lines


def _alert_message(alert: Alert, config: EmailConfig) -> EmailMessage:
    body = "\n".join([*_alert_lines(alert), "", "-- credit-etl"]) + "\n"
    return _new_message(config, alert.subject(), body)


def _digest_message(alerts: list[Alert], config: EmailConfig) -> EmailMessage:
    counts: dict[str, int] = {}
    for alert in alerts:
        counts[alert.kind] = counts.get(alert.kind, 0) + 1
    quarters = sorted({alert.quarter for alert in alerts if alert.quarter})
    summary = ", ".join(f"{count} {kind}" for kind, count in counts.items())
    subject = f"{SUBJECT_PREFIX} {' '.join(quarters) or 'alerts'}: {summary}"
    lines = [f"{len(alerts)} alerts ({summary}).", ""]
    for number, alert in enumerate(alerts, start=1):
        lines.append(f"{number}. {alert.subject().removeprefix(SUBJECT_PREFIX + ' ')}")
        lines.extend(f"   {line}" if line else "" for line in _alert_lines(alert))
        lines.append("")
    lines.append("-- credit-etl")
    return _new_message(config, subject, "\n".join(lines) + "\n")


# --- webhook -------------------------------------------------------------------------


class _RejectRedirect(urllib.request.HTTPRedirectHandler):
    """Turn a redirect into an HTTPError, so headers with tokens stay with the URL's host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _post_webhook(
    alerts: list[Alert], config: WebhookConfig, result: ChannelResult
) -> None:
    body = json.dumps(
        {"alerts": [alert.to_json() for alert in alerts]}, ensure_ascii=False
    ).encode("utf-8")
    headers = {
        "User-Agent": USER_AGENT,
        **config.headers,
        "Content-Type": "application/json",
    }
    opener = urllib.request.build_opener(_RejectRedirect)

    def attempt() -> None:
        request = urllib.request.Request(
            config.url, data=body, headers=headers, method="POST"
        )
        with opener.open(request, timeout=config.timeout) as response:
            response.read()

    if _attempt_with_retries(
        result,
        config.attempts,
        config.backoff_seconds,
        attempt,
        _http_error_is_transient,
    ):
        result.sent = 1
        result.delivered = set(range(len(alerts)))
    else:
        result.failed = 1
        log.error("webhook to %s: %d alerts not delivered", config.target, len(alerts))


def _http_error_is_transient(error: BaseException) -> bool:
    """Return True for timeouts, refused connections, 408, 429 and 5xx replies."""
    if isinstance(error, urllib.error.HTTPError):
        return error.code in (408, 429) or error.code >= 500
    if isinstance(error, urllib.error.URLError):
        return not isinstance(error.reason, ssl.SSLCertVerificationError)
    return not isinstance(error, ssl.SSLCertVerificationError)


# --- the deadline check --------------------------------------------------------------


@dataclass
class NotifySummary:
    """Result of one deadline check: silent and late units, due alerts, send results."""

    quarter: str
    checked_at: dt.datetime
    deadline: dt.datetime
    deadline_passed: bool
    silent_units: list[str]
    low_timeliness_units: list[str]
    alerts_due: list[Alert]
    alerts_recorded: int
    result: SendResult
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-compatible summary for the command line and Dagster metadata."""
        return {
            "quarter": self.quarter,
            "checked_at": self.checked_at.isoformat(),
            "deadline": self.deadline.isoformat(),
            "deadline_passed": self.deadline_passed,
            "silent_units": self.silent_units,
            "low_timeliness_units": self.low_timeliness_units,
            "alerts_due": len(self.alerts_due),
            "alerts_recorded": self.alerts_recorded,
            "send": self.result.as_dict(),
            "notes": self.notes,
        }


def notify_deadlines(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    quarter: Quarter,
    now: dt.datetime | None = None,
    config: NotifyConfig | None = None,
    reminder_interval: dt.timedelta | None = None,
    timeliness_threshold: float | None = None,
    units: list[Unit] | None = None,
) -> NotifySummary:
    """Check a quarter's deadline and timeliness, then send and record the due alerts.

    ``con`` must be writable because it stores ``alerts_sent``. ``config`` defaults to
    ``<data dir>/notify.toml``, and ``reminder_interval`` and ``timeliness_threshold``
    default to its [alerts] section. Without a threshold there are no timeliness
    alerts. Only alerts that at least one channel delivered are recorded, so the next
    check sends the rest again.
    """
    if config is None:
        config = load_notify_config(settings.data_dir)
    if reminder_interval is None:
        reminder_interval = config.reminder_interval
    if timeliness_threshold is None:
        timeliness_threshold = config.timeliness_threshold
    units = units or load_units()
    notes: list[str] = []

    check = check_deadlines(con, settings, quarter, now, units)
    alerts = silent_unit_alerts(check)
    if not check.passed:
        notes.append(
            f"the deadline {check.deadline:%Y-%m-%d %H:%M:%S} has not passed; "
            f"{len(check.silent)} units have not delivered yet and are not alerted"
        )
    low = []
    if timeliness_threshold is not None:
        low = low_timeliness_alerts(con, quarter, timeliness_threshold, units)
        alerts.extend(low)
        if not _has_figures(con, quarter):
            notes.append(
                f"no figures for {quarter.label} yet, so timeliness was not checked; "
                "compute the quarter's figures first"
            )

    due = due_alerts(con, alerts, check.checked_at, reminder_interval)
    if alerts and not due:
        notes.append(
            f"all {len(alerts)} alerts were sent less than {reminder_interval} ago"
        )
    result = send(due, config)
    if due and result.note:
        notes.append(result.note)
    elif not config.channels:
        notes.append(config.missing_channel_note())
    delivered = [due[index] for index in result.delivered]
    recorded = record_sent(con, delivered, check.checked_at)
    log.info(
        "%s: %d silent units, %d below timeliness, %d alerts due, %d delivered",
        quarter.label,
        len(check.silent) if check.passed else 0,
        len(low),
        len(due),
        len(delivered),
    )
    return NotifySummary(
        quarter=quarter.label,
        checked_at=check.checked_at,
        deadline=check.deadline,
        deadline_passed=check.passed,
        silent_units=[unit.unit_id for unit in check.silent] if check.passed else [],
        low_timeliness_units=[alert.unit_id for alert in low],
        alerts_due=due,
        alerts_recorded=recorded,
        result=result,
        notes=notes,
    )


def _has_figures(con: duckdb.DuckDBPyConnection, quarter: Quarter) -> bool:
    if not _table_exists(con, "unit_figures"):
        return False
    row = con.execute(
        "SELECT count(*) FROM unit_figures WHERE period = ?", [quarter.label]
    ).fetchone()
    return bool(row[0])
