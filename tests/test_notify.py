"""Alerts by e-mail and webhook against real servers on 127.0.0.1.

The SMTP and HTTP servers below run in threads on ports that the OS chooses, record
what they receive and stop at the end of each test. The alert state lives in a real
DuckDB warehouse file under ``tmp_path``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import email
import email.policy
import json
import logging
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import duckdb
import pytest
import trustme
from conftest import deliver_one_record

from credit_etl.deadlines import SHANGHAI
from credit_etl.notify import (
    Alert,
    NotifyConfigError,
    load_notify_config,
    low_timeliness_alerts,
    notify_deadlines,
    record_and_filter,
    run_failed_alert,
    send,
)
from credit_etl.periods import Quarter
from credit_etl.registry import load_units
from credit_etl.settings import Settings
from credit_etl.warehouse import FIGURE_COLUMNS, connect

QUARTER = Quarter(2018, 4)
AFTER_DEADLINE = dt.datetime(2019, 1, 11, 9, 0, tzinfo=SHANGHAI)
SILENT = {"hongqi", "tax", "archives"}
SENDER = "credit-etl@example.org"
RECIPIENT = "office@example.org"
PASSWORD_VARIABLE = "CREDIT_ETL_TEST_SMTP_PASSWORD"
SERVER_TIMEOUT_SECONDS = 5


# --- test servers --------------------------------------------------------------------


@dataclass
class ReceivedMail:
    mail_from: str
    recipients: list[str]
    data: bytes
    tls: bool = False  # whether DATA came after a completed STARTTLS

    def parsed(self) -> email.message.EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)


@dataclass
class SmtpRecorder:
    """State of the test SMTP server: accepted messages, logins and connections."""

    credentials: tuple[str, str] | None = None
    refuse_connections: int = 0  # reply 421 to the first N connections
    # Context for the server side of STARTTLS. EHLO offers STARTTLS only when it is set.
    tls_context: ssl.SSLContext | None = None
    # True hides AUTH from EHLO and rejects AUTH and MAIL until STARTTLS, like servers
    # that accept a login only over TLS.
    require_tls: bool = False
    messages: list[ReceivedMail] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)
    commands: list[tuple[str, bool]] = field(default_factory=list)  # (verb, tls)
    handshake_errors: list[str] = field(default_factory=list)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class SmtpHandler(socketserver.StreamRequestHandler):
    """One SMTP session of the test server.

    Commands: EHLO, HELO, STARTTLS, AUTH PLAIN and LOGIN, MAIL, RCPT, DATA, RSET, NOOP
    and QUIT.
    """

    server: SmtpServer
    tls = False

    def reply(self, *lines: str) -> None:
        self.wfile.write("".join(f"{line}\r\n" for line in lines).encode())
        self.wfile.flush()

    def read_line(self) -> str | None:
        line = self.rfile.readline()
        if not line:
            return None
        return line.decode("utf-8").rstrip("\r\n")

    def handle(self) -> None:
        self.connection.settimeout(SERVER_TIMEOUT_SECONDS)
        state = self.server.recorder
        with state.lock:
            state.connections += 1
            refuse = state.connections <= state.refuse_connections
        if refuse:
            self.reply("421 127.0.0.1 busy, try again later")
            return
        self.reply("220 127.0.0.1 test ESMTP")
        authenticated = state.credentials is None
        mail_from = None
        recipients: list[str] = []
        while True:
            line = self.read_line()
            if line is None:
                return
            verb, _, argument = line.partition(" ")
            verb = verb.upper()
            with state.lock:
                state.commands.append((verb, self.tls))
            tls_missing = state.require_tls and not self.tls
            if verb == "EHLO":
                lines = ["250-127.0.0.1", "250-8BITMIME"]
                if state.tls_context is not None and not self.tls:
                    lines.append("250-STARTTLS")
                if state.credentials is not None and not tls_missing:
                    lines.append("250-AUTH PLAIN LOGIN")
                self.reply(*lines, "250 HELP")
            elif verb == "HELO":
                self.reply("250 127.0.0.1")
            elif verb == "STARTTLS" and state.tls_context is not None:
                if self.tls:
                    self.reply("503 5.5.1 TLS already active")
                    continue
                self.reply("220 2.0.0 ready to start TLS")
                if not self.start_tls(state.tls_context):
                    return
                # RFC 3207 section 4.2: the session starts over after the handshake.
                authenticated = state.credentials is None
                mail_from = None
                recipients = []
            elif verb in ("AUTH", "MAIL") and tls_missing:
                self.reply("530 5.7.0 must issue a STARTTLS command first")
            elif verb == "AUTH":
                authenticated = self.authenticate(argument)
            elif verb == "MAIL":
                if not authenticated:
                    self.reply("530 5.7.0 authentication required")
                    continue
                mail_from = argument
                recipients = []
                self.reply("250 OK")
            elif verb == "RCPT":
                recipients.append(argument)
                self.reply("250 OK")
            elif verb == "DATA":
                if mail_from is None or not recipients:
                    self.reply("503 need MAIL and RCPT first")
                    continue
                self.reply("354 end data with <CR><LF>.<CR><LF>")
                data = self.read_data()
                with state.lock:
                    state.messages.append(
                        ReceivedMail(mail_from, recipients, data, self.tls)
                    )
                mail_from = None
                recipients = []
                self.reply("250 OK queued")
            elif verb == "RSET":
                mail_from = None
                recipients = []
                self.reply("250 OK")
            elif verb == "NOOP":
                self.reply("250 OK")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply(f"502 {verb} not implemented")

    def start_tls(self, context: ssl.SSLContext) -> bool:
        """Wrap the connection in TLS and return whether the handshake succeeded."""
        # The client sends nothing between STARTTLS and the handshake, so the buffered
        # reader contains no plain-text bytes that closing it could lose.
        self.rfile.close()
        try:
            self.connection = context.wrap_socket(self.connection, server_side=True)
        except (ssl.SSLError, OSError) as error:
            with self.server.recorder.lock:
                self.server.recorder.handshake_errors.append(str(error))
            return False
        self.tls = True
        self.rfile = self.connection.makefile("rb")
        self.wfile = self.connection.makefile("wb")
        return True

    def finish(self) -> None:
        super().finish()
        if self.connection is not self.request:
            # socketserver closes only the plain socket, which wrap_socket detached.
            self.connection.close()

    def authenticate(self, argument: str) -> bool:
        state = self.server.recorder
        mechanism, _, initial = argument.partition(" ")
        mechanism = mechanism.upper()
        if mechanism == "PLAIN":
            if not initial:
                self.reply("334 ")
                initial = self.read_line() or ""
            _authzid, user, password = base64.b64decode(initial).split(b"\0")
        elif mechanism == "LOGIN":
            if not initial:
                self.reply("334 VXNlcm5hbWU6")
                initial = self.read_line() or ""
            user = base64.b64decode(initial)
            self.reply("334 UGFzc3dvcmQ6")
            password = base64.b64decode(self.read_line() or "")
        else:
            self.reply("504 mechanism not supported")
            return False
        login = (user.decode(), password.decode())
        with state.lock:
            state.logins.append(login)
        if login == state.credentials:
            self.reply("235 2.7.0 authentication successful")
            return True
        self.reply("535 5.7.8 authentication credentials invalid")
        return False

    def read_data(self) -> bytes:
        lines = []
        while True:
            line = self.rfile.readline()
            if not line or line == b".\r\n":
                break
            # RFC 5321 section 4.5.2: the client doubles a leading dot.
            if line.startswith(b".."):
                line = line[1:]
            lines.append(line)
        return b"".join(lines)


class SmtpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, recorder: SmtpRecorder) -> None:
        super().__init__(("127.0.0.1", 0), SmtpHandler)
        self.recorder = recorder


@dataclass
class WebhookRecorder:
    """State of the test HTTP server: every POST and the statuses to reply with."""

    statuses: list[int] = field(default_factory=list)  # used in order, then 200
    requests: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class WebhookHandler(BaseHTTPRequestHandler):
    server: WebhookServer

    def do_POST(self) -> None:  # noqa: N802 - name fixed by http.server
        state = self.server.recorder
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with state.lock:
            state.requests.append(
                {
                    "path": self.path,
                    "headers": dict(self.headers.items()),
                    "body": body,
                }
            )
            status = state.statuses.pop(0) if state.statuses else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class WebhookServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, recorder: WebhookRecorder) -> None:
        super().__init__(("127.0.0.1", 0), WebhookHandler)
        self.recorder = recorder


@contextlib.contextmanager
def serving(server: socketserver.BaseServer) -> Iterator[int]:
    """Run ``server`` in a thread, yield its port, then shut it down and close it."""
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=SERVER_TIMEOUT_SECONDS)


@pytest.fixture
def smtp() -> Iterator[tuple[SmtpRecorder, int]]:
    """Yield the recorder and port of a plain SMTP server without login."""
    recorder = SmtpRecorder()
    with serving(SmtpServer(recorder)) as port:
        yield recorder, port


@pytest.fixture
def smtp_factory() -> Iterator[Callable[..., tuple[SmtpRecorder, int]]]:
    """Yield a function that starts SMTP servers, all stopped after the test."""
    with contextlib.ExitStack() as stack:

        def start(**options: Any) -> tuple[SmtpRecorder, int]:
            recorder = SmtpRecorder(**options)
            port = stack.enter_context(serving(SmtpServer(recorder)))
            return recorder, port

        yield start


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    """A test certificate authority, which no system store trusts."""
    return trustme.CA()


def server_tls_context(ca: trustme.CA, name: str = "127.0.0.1") -> ssl.SSLContext:
    """Return a server context with a certificate for ``name`` issued by ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    return context


@pytest.fixture(scope="session")
def tls_context(tls_ca: trustme.CA) -> ssl.SSLContext:
    """Server context with a certificate for 127.0.0.1 issued by ``tls_ca``."""
    return server_tls_context(tls_ca)


@pytest.fixture
def ca_file(tmp_path: Path, tls_ca: trustme.CA) -> Path:
    """PEM file with the certificate of ``tls_ca``, outside the data directory."""
    path = tmp_path / "mail-ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def webhook() -> Iterator[tuple[WebhookRecorder, int]]:
    """Yield the recorder and port of an HTTP server that records every POST."""
    recorder = WebhookRecorder()
    with serving(WebhookServer(recorder)) as port:
        yield recorder, port


def closed_port() -> int:
    """Return a port on 127.0.0.1 with no listener, so connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- data directory and configuration -------------------------------------------------


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep urllib from sending requests for 127.0.0.1 through a configured proxy."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A data directory where every unit but hongqi, tax and archives delivered."""
    settings = Settings(data_dir=tmp_path / "data", settle_seconds=0)
    settings.ensure_dirs()
    for serial, unit in enumerate(load_units()):
        if unit.unit_id not in SILENT:
            deliver_one_record(settings.incoming_dir, unit.unit_id, "20181105", serial)
    return settings


@pytest.fixture
def con(settings: Settings) -> Iterator[duckdb.DuckDBPyConnection]:
    con = connect(settings)
    yield con
    con.close()


def email_section(port: int, **keys: object) -> str:
    values = {
        "host": "127.0.0.1",
        "port": port,
        "starttls": False,
        "sender": SENDER,
        "recipients": [RECIPIENT],
        "attempts": 2,
        "backoff_seconds": 0,
        "timeout": 5,
        **keys,
    }
    return "[email]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in values.items())


def webhook_section(port: int, path: str = "/hook?token=t0ken", **keys: object) -> str:
    values = {
        "url": f"http://127.0.0.1:{port}{path}",
        "attempts": 2,
        "backoff_seconds": 0,
        "timeout": 5,
        **keys,
    }
    return "[webhook]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in values.items())


def _toml(value: object) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def write_config(settings: Settings, *sections: str) -> None:
    (settings.data_dir / "notify.toml").write_text("\n".join(sections), "utf-8")


def sent_rows(con: duckdb.DuckDBPyConnection) -> dict[str, tuple]:
    rows = con.execute(
        """SELECT unit_id, first_sent_at, last_sent_at, times_sent FROM alerts_sent
           WHERE kind = 'silent_unit' AND quarter = '2018Q4'"""
    ).fetchall()
    return {row[0]: row[1:] for row in rows}


def insert_figures(
    con: duckdb.DuckDBPyConnection, unit_id: str, increment: int, timely: int
) -> None:
    counts = dict.fromkeys(FIGURE_COLUMNS, 0)
    counts["dp_quarter_increment"] = increment
    counts["dp_quarter_timely"] = timely
    placeholders = ", ".join("?" for _ in FIGURE_COLUMNS)
    con.execute(
        f"""INSERT INTO unit_figures (period, cutoff, unit_id, {", ".join(counts)})
            VALUES (?, ?, ?, {placeholders})""",
        [QUARTER.label, dt.date(2019, 1, 10), unit_id, *counts.values()],
    )


def run_check(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    now: dt.datetime = AFTER_DEADLINE,
    **options: object,
):
    config = load_notify_config(settings.data_dir, environ={})
    return notify_deadlines(con, settings, QUARTER, now, config, **options)


# --- silent units by e-mail -----------------------------------------------------------


def test_three_silent_units_three_emails(settings, con, smtp) -> None:
    recorder, port = smtp
    write_config(settings, email_section(port))

    summary = run_check(con, settings)

    assert set(summary.silent_units) == SILENT
    assert summary.result.channels["email"].sent == 3
    assert summary.result.channels["email"].errors == []
    assert summary.alerts_recorded == 3
    assert len(recorder.messages) == 3
    subjects = {}
    for received in recorder.messages:
        message = received.parsed()
        assert received.recipients == [f"TO:<{RECIPIENT}>"]
        subjects[message["Subject"]] = message.get_content()
    for unit_id, name in (
        ("hongqi", "红旗区"),
        ("tax", "市税务局"),
        ("archives", "市档案局"),
    ):
        subject = f"[credit-etl] silent_unit 2018Q4: {unit_id} {name}"
        assert subject in subjects
        assert "2019-01-10 23:59:59" in subjects[subject]
        assert "delivered no file for 2018Q4" in subjects[subject]


def test_digest_lists_all_units(settings, con, smtp) -> None:
    recorder, port = smtp
    write_config(settings, email_section(port, digest=True))

    summary = run_check(con, settings)

    assert len(recorder.messages) == 1
    assert summary.result.channels["email"].sent == 1
    assert summary.alerts_recorded == 3
    message = recorder.messages[0].parsed()
    assert message["Subject"] == "[credit-etl] 2018Q4: 3 silent_unit"
    body = message.get_content()
    for unit_id in SILENT:
        assert f"silent_unit 2018Q4: {unit_id}" in body


def test_second_check_sends_nothing(settings, con, smtp) -> None:
    recorder, port = smtp
    write_config(settings, email_section(port))
    run_check(con, settings)

    again = run_check(con, settings, AFTER_DEADLINE + dt.timedelta(minutes=5))

    assert len(recorder.messages) == 3
    assert again.alerts_due == []
    assert again.alerts_recorded == 0
    assert any("less than 1 day" in note for note in again.notes)
    assert {row[2] for row in sent_rows(con).values()} == {1}


def test_reminder_after_interval(settings, con, smtp) -> None:
    recorder, port = smtp
    write_config(settings, email_section(port))
    interval = dt.timedelta(hours=6)
    run_check(con, settings, reminder_interval=interval)
    first = sent_rows(con)

    early = run_check(
        con,
        settings,
        AFTER_DEADLINE + dt.timedelta(hours=5),
        reminder_interval=interval,
    )
    later = run_check(
        con, settings, AFTER_DEADLINE + interval, reminder_interval=interval
    )

    assert early.alerts_due == []
    assert len(later.alerts_due) == 3
    assert len(recorder.messages) == 6
    rows = sent_rows(con)
    assert set(rows) == SILENT
    for unit_id, (first_sent, last_sent, times_sent) in rows.items():
        assert first_sent == first[unit_id][0]
        assert last_sent - first_sent == interval
        assert times_sent == 2


def test_reminder_hours_from_config(settings, con, smtp) -> None:
    recorder, port = smtp
    write_config(settings, email_section(port), "[alerts]\nreminder_hours = 2\n")
    run_check(con, settings)

    later = run_check(con, settings, AFTER_DEADLINE + dt.timedelta(hours=2))

    assert len(later.alerts_due) == 3
    assert len(recorder.messages) == 6


def test_no_alerts_before_deadline(settings, con, smtp) -> None:
    recorder, port = smtp
    write_config(settings, email_section(port))

    summary = run_check(con, settings, dt.datetime(2019, 1, 10, 12, tzinfo=SHANGHAI))

    assert not summary.deadline_passed
    assert summary.alerts_due == []
    assert recorder.messages == []
    assert any("has not passed" in note for note in summary.notes)


# --- webhook --------------------------------------------------------------------------


def test_webhook_receives_json(settings, con, webhook) -> None:
    recorder, port = webhook
    write_config(
        settings, webhook_section(port, headers={"Authorization": "Bearer abc"})
    )

    summary = run_check(con, settings)

    channel = summary.result.channels["webhook"]
    assert channel.sent == 1
    assert channel.target == f"http://127.0.0.1:{port}"
    assert len(recorder.requests) == 1
    request = recorder.requests[0]
    assert request["path"] == "/hook?token=t0ken"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["Authorization"] == "Bearer abc"
    payload = json.loads(request["body"])
    assert list(payload) == ["alerts"]
    assert {alert["unit_id"] for alert in payload["alerts"]} == SILENT
    hongqi = next(a for a in payload["alerts"] if a["unit_id"] == "hongqi")
    assert hongqi["kind"] == "silent_unit"
    assert hongqi["quarter"] == "2018Q4"
    assert hongqi["unit_name"] == "红旗区"
    assert "红旗区" in hongqi["message"]
    assert hongqi["details"]["deadline"] == "2019-01-10T23:59:59+08:00"


def test_webhook_retries_server_error(settings, con, webhook, smtp_factory) -> None:
    recorder, port = webhook
    recorder.statuses = [503]
    mail, mail_port = smtp_factory(refuse_connections=1)
    write_config(settings, email_section(mail_port), webhook_section(port))

    summary = run_check(con, settings)

    assert len(recorder.requests) == 2
    assert summary.result.channels["webhook"].sent == 1
    assert summary.result.channels["webhook"].errors == [
        "attempt 1: HTTP 503 Service Unavailable"
    ]
    assert mail.connections == 2
    assert len(mail.messages) == 3
    assert len(summary.result.channels["email"].errors) == 1
    assert "421" in summary.result.channels["email"].errors[0]


def test_webhook_client_error_not_retried(settings, con, webhook) -> None:
    recorder, port = webhook
    recorder.statuses = [400, 400]
    write_config(settings, webhook_section(port))

    summary = run_check(con, settings)

    channel = summary.result.channels["webhook"]
    assert len(recorder.requests) == 1
    assert channel.sent == 0
    assert channel.failed == 1
    assert channel.errors == ["attempt 1: HTTP 400 Bad Request"]
    assert summary.alerts_recorded == 0


# --- broken channels ------------------------------------------------------------------


def test_email_down_webhook_delivers(settings, con, webhook, caplog) -> None:
    recorder, port = webhook
    down = closed_port()
    write_config(settings, email_section(down), webhook_section(port))

    with caplog.at_level(logging.WARNING, logger="credit_etl.notify"):
        summary = run_check(con, settings)

    email_result = summary.result.channels["email"]
    assert email_result.sent == 0
    assert email_result.failed == 3
    assert len(email_result.errors) == 2
    assert "ConnectionRefusedError" in email_result.errors[0]
    assert f"smtp://127.0.0.1:{down}" in caplog.text
    assert "ConnectionRefusedError" in caplog.text
    assert summary.result.channels["webhook"].sent == 1
    assert len(recorder.requests) == 1
    assert summary.alerts_recorded == 3


def test_webhook_down_email_delivers(settings, con, smtp) -> None:
    recorder, port = smtp
    down = closed_port()
    write_config(settings, webhook_section(down), email_section(port))

    summary = run_check(con, settings)

    webhook_result = summary.result.channels["webhook"]
    assert webhook_result.failed == 1
    assert len(webhook_result.errors) == 2
    assert "ConnectionRefusedError" in webhook_result.errors[0]
    assert webhook_result.target == f"http://127.0.0.1:{down}"
    assert len(recorder.messages) == 3
    assert summary.alerts_recorded == 3


def test_failed_alerts_sent_next_check(settings, con, smtp) -> None:
    recorder, port = smtp
    write_config(settings, email_section(closed_port()), webhook_section(closed_port()))
    failed = run_check(con, settings)
    assert failed.alerts_recorded == 0

    write_config(settings, email_section(port))
    retried = run_check(con, settings, AFTER_DEADLINE + dt.timedelta(minutes=1))

    assert len(retried.alerts_due) == 3
    assert len(recorder.messages) == 3
    assert set(sent_rows(con)) == SILENT


def test_starttls_unsupported_sends_nothing(settings, con, smtp_factory) -> None:
    recorder, port = smtp_factory(credentials=("credit", "pa55-secret"))
    write_config(
        settings,
        email_section(port, starttls=True, username="credit", password="pa55-secret"),
    )

    summary = run_check(con, settings)

    email_result = summary.result.channels["email"]
    assert email_result.failed == 3
    assert len(email_result.errors) == 1
    assert "SMTPNotSupportedError" in email_result.errors[0]
    assert (
        f"smtp://127.0.0.1:{port} does not offer STARTTLS, so nothing was sent"
        in email_result.errors[0]
    )
    assert "submission port" in email_result.errors[0]
    assert recorder.connections == 1
    assert [verb for verb, _tls in recorder.commands] == ["EHLO", "QUIT"]
    assert recorder.logins == []
    assert recorder.messages == []
    assert summary.alerts_recorded == 0


# --- login ----------------------------------------------------------------------------


def test_login_uses_password_env(settings, con, smtp_factory, caplog) -> None:
    recorder, port = smtp_factory(credentials=("credit", "pa55-secret"))
    write_config(
        settings,
        email_section(port, username="credit", password_env=PASSWORD_VARIABLE),
    )
    config = load_notify_config(
        settings.data_dir, environ={PASSWORD_VARIABLE: "pa55-secret"}
    )

    with caplog.at_level(logging.DEBUG):
        summary = notify_deadlines(con, settings, QUARTER, AFTER_DEADLINE, config)

    assert recorder.logins[0] == ("credit", "pa55-secret")
    assert len(recorder.messages) == 3
    assert summary.result.channels["email"].errors == []
    assert "pa55-secret" not in repr(config)
    assert "pa55-secret" not in caplog.text


def test_wrong_password_not_retried(settings, con, smtp_factory, caplog) -> None:
    recorder, port = smtp_factory(credentials=("credit", "right"))
    write_config(settings, email_section(port, username="credit", password="wrong-pw"))

    with caplog.at_level(logging.DEBUG):
        summary = run_check(con, settings)

    email_result = summary.result.channels["email"]
    assert recorder.connections == 1
    assert recorder.messages == []
    assert email_result.failed == 3
    assert "535" in email_result.errors[0]
    assert "wrong-pw" not in caplog.text
    assert "wrong-pw" not in " ".join(email_result.errors)


# --- STARTTLS -------------------------------------------------------------------------


def test_starttls_login_over_tls(
    settings, con, smtp_factory, tls_context, ca_file
) -> None:
    recorder, port = smtp_factory(
        credentials=("credit", "pa55-secret"),
        tls_context=tls_context,
        require_tls=True,
    )
    write_config(
        settings,
        email_section(
            port,
            starttls=True,
            ca_file=str(ca_file),
            username="credit",
            password="pa55-secret",
        ),
    )

    summary = run_check(con, settings)

    email_result = summary.result.channels["email"]
    assert email_result.errors == []
    assert email_result.sent == 3
    assert summary.alerts_recorded == 3
    assert recorder.handshake_errors == []
    assert recorder.logins == [("credit", "pa55-secret")]
    assert [verb for verb, tls in recorder.commands if not tls] == ["EHLO", "STARTTLS"]
    assert ("EHLO", True) in recorder.commands
    assert ("AUTH", True) in recorder.commands
    assert ("DATA", True) in recorder.commands
    assert len(recorder.messages) == 3
    assert all(received.tls for received in recorder.messages)


def test_starttls_untrusted_ca_retried_later(
    settings, con, smtp_factory, tls_context, ca_file, caplog
) -> None:
    recorder, port = smtp_factory(tls_context=tls_context)
    write_config(settings, email_section(port, starttls=True))

    with caplog.at_level(logging.WARNING, logger="credit_etl.notify"):
        failed = run_check(con, settings)

    email_result = failed.result.channels["email"]
    assert email_result.failed == 3
    assert len(email_result.errors) == 1
    error = email_result.errors[0]
    assert "the server certificate of 127.0.0.1 could not be verified" in error
    assert "unable to get local issuer certificate" in error
    assert "set ca_file in [email] of notify.toml" in error
    assert "could not be verified" in caplog.text
    assert recorder.connections == 1
    assert len(recorder.handshake_errors) == 1
    assert [verb for verb, _tls in recorder.commands] == ["EHLO", "STARTTLS"]
    assert recorder.messages == []
    assert failed.alerts_recorded == 0
    assert sent_rows(con) == {}

    write_config(settings, email_section(port, starttls=True, ca_file=str(ca_file)))
    retried = run_check(con, settings, AFTER_DEADLINE + dt.timedelta(minutes=1))

    assert len(retried.alerts_due) == 3
    assert retried.result.channels["email"].errors == []
    assert len(recorder.messages) == 3
    assert set(sent_rows(con)) == SILENT


def test_starttls_other_ca_names_ca_file(
    settings, con, smtp_factory, tls_context, tmp_path
) -> None:
    recorder, port = smtp_factory(tls_context=tls_context)
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    write_config(settings, email_section(port, starttls=True, ca_file=str(other_ca)))

    summary = run_check(con, settings)

    email_result = summary.result.channels["email"]
    assert email_result.failed == 3
    assert len(email_result.errors) == 1
    assert "could not be verified" in email_result.errors[0]
    assert f"to ca_file {other_ca}" in email_result.errors[0]
    assert recorder.messages == []
    assert summary.alerts_recorded == 0


def test_starttls_wrong_host_names_fix(
    settings, con, smtp_factory, tls_ca, ca_file
) -> None:
    context = server_tls_context(tls_ca, "mail.example.org")
    recorder, port = smtp_factory(tls_context=context)
    write_config(settings, email_section(port, starttls=True, ca_file=str(ca_file)))

    summary = run_check(con, settings)

    error = summary.result.channels["email"].errors[0]
    assert "the server certificate of 127.0.0.1 could not be verified" in error
    assert "IP address mismatch" in error
    assert "set host in [email] of notify.toml" in error
    assert recorder.connections == 1
    assert recorder.messages == []


def test_starttls_ca_file_removed_after_load(
    settings, con, smtp_factory, tls_context, ca_file
) -> None:
    recorder, port = smtp_factory(tls_context=tls_context)
    write_config(settings, email_section(port, starttls=True, ca_file=str(ca_file)))
    config = load_notify_config(settings.data_dir, environ={})
    ca_file.unlink()

    summary = notify_deadlines(con, settings, QUARTER, AFTER_DEADLINE, config)

    email_result = summary.result.channels["email"]
    assert email_result.failed == 3
    assert email_result.errors == [
        f"ca_file {ca_file} could not be loaded: FileNotFoundError: "
        "[Errno 2] No such file or directory"
    ]
    assert recorder.connections == 0
    assert summary.alerts_recorded == 0


# --- no configuration -----------------------------------------------------------------


def test_no_config_sends_nothing(settings, con) -> None:
    summary = run_check(con, settings)

    assert set(summary.silent_units) == SILENT
    assert summary.result.channels == {}
    assert summary.alerts_recorded == 0
    assert len(summary.notes) == 1
    assert "no notification file" in summary.notes[0]
    assert str(settings.data_dir / "notify.toml") in summary.notes[0]
    assert "3 alerts not sent" in summary.notes[0]
    assert sent_rows(con) == {}


def test_send_without_config_returns_note() -> None:
    alert = run_failed_alert("ingest_job", "r1", "OSError: disk full")

    result = send([alert], None)

    assert result.channels == {}
    assert result.note == "no notification configuration given; 1 alerts not sent"


def test_config_without_channel_notes(settings, con) -> None:
    write_config(settings, "[alerts]\nreminder_hours = 12\n")

    summary = run_check(con, settings)

    assert summary.result.channels == {}
    assert "defines neither [email] nor [webhook]" in summary.notes[0]


# --- configuration errors -------------------------------------------------------------

VALID_EMAIL = (
    'host = "127.0.0.1"\nsender = "a@example.org"\nrecipients = ["b@example.org"]\n'
)
VALID_URL = 'url = "http://127.0.0.1:9/hook"\n'

INVALID_CONFIGS = [
    ("[email\nhost = 1", "invalid TOML"),
    ("[mail]\nhost = 'x'", "unknown section or key 'mail'"),
    ("email = 5", "email must be a section"),
    (
        '[email]\nsender = "a@example.org"\nrecipients = ["b@example.org"]',
        "[email] host is missing",
    ),
    (
        "[email]\n" + VALID_EMAIL + "port = 70000",
        "[email] port must be from 1 to 65535",
    ),
    ("[email]\n" + VALID_EMAIL + 'port = "25"', "[email] port must be a whole number"),
    (
        "[email]\n" + VALID_EMAIL + 'starttls = "yes"',
        "[email] starttls must be true or false",
    ),
    (
        "[email]\n" + VALID_EMAIL + 'recipient = ["c@example.org"]',
        "[email] recipient is not a known key",
    ),
    (
        "[email]\n" + VALID_EMAIL + "attempts = 0",
        "[email] attempts must be from 1 to 10",
    ),
    (
        '[email]\nhost = "127.0.0.1:25"\nsender = "a@example.org"\nrecipients = ["b@example.org"]',
        "[email] host '127.0.0.1:25' contains a colon",
    ),
    (
        '[email]\nhost = "127.0.0.1"\nsender = "a@example.org"\nrecipients = "b@example.org"',
        "[email] recipients must be a non-empty array",
    ),
    (
        '[email]\nhost = "127.0.0.1"\nsender = "a@example.org"\nrecipients = ["b@example.org, c@example.org"]',
        "[email] recipients contains an invalid e-mail address",
    ),
    (
        '[email]\nhost = "127.0.0.1"\nsender = "nobody"\nrecipients = ["b@example.org"]',
        "[email] sender contains an invalid e-mail address",
    ),
    (
        "[email]\n" + VALID_EMAIL + 'username = "credit"',
        "[email] username is set but no password is",
    ),
    ("[email]\n" + VALID_EMAIL + 'ca_file = ""', "[email] ca_file is empty"),
    (
        "[email]\n" + VALID_EMAIL + "ca_file = 5",
        "[email] ca_file must be a string, got an integer",
    ),
    (
        "[email]\n" + VALID_EMAIL + 'starttls = false\nca_file = "mail-ca.pem"',
        "[email] ca_file is set but starttls = false",
    ),
    ("[email]\n" + VALID_EMAIL + 'ca_file = "."', "is a directory; give the path"),
    (
        "[email]\n" + VALID_EMAIL + 'password = "x"',
        "[email] username is missing but a password is set",
    ),
    (
        "[email]\n"
        + VALID_EMAIL
        + 'username = "u"\npassword = "x"\npassword_env = "P"',
        "[email] password and password_env are both set",
    ),
    (
        "[email]\n"
        + VALID_EMAIL
        + 'username = "u"\npassword_env = "CREDIT_ETL_UNSET_PASSWORD"',
        "names the environment variable CREDIT_ETL_UNSET_PASSWORD, which is not set",
    ),
    (
        "[email]\n" + VALID_EMAIL + 'username = "u"\npassword_env = "not a name"',
        "[email] password_env 'not a name' is not an environment variable name",
    ),
    (
        '[webhook]\nurl = "ftp://127.0.0.1/hook"',
        "[webhook] url must be an absolute http:// or https:// URL",
    ),
    ("[webhook]\ntimeout = 5", "[webhook] url is missing"),
    (
        "[webhook]\n" + VALID_URL + "timeout = 0",
        "[webhook] timeout must be greater than 0 and at most 300 seconds",
    ),
    (
        "[webhook]\n" + VALID_URL + 'headers = { "Content-Type" = "text/plain" }',
        "[webhook] headers sets Content-Type",
    ),
    (
        "[webhook]\n" + VALID_URL + "headers = { Token = 5 }",
        "[webhook] headers value of Token must be a string",
    ),
    (
        "[alerts]\ntimeliness_threshold = 50",
        "[alerts] timeliness_threshold must be greater than 0 and at most 1",
    ),
    ("[alerts]\nreminder_hours = 0", "[alerts] reminder_hours must be greater than 0"),
]


@pytest.mark.parametrize(("text", "expected"), INVALID_CONFIGS)
def test_invalid_config_names_key(settings, text: str, expected: str) -> None:
    write_config(settings, text)

    with pytest.raises(NotifyConfigError) as raised:
        load_notify_config(settings.data_dir, environ={})

    message = str(raised.value)
    assert message.startswith(f"{settings.data_dir / 'notify.toml'}:")
    assert expected in message


def test_invalid_url_hides_secret(settings) -> None:
    write_config(settings, '[webhook]\nurl = "https://user:s3cret@127.0.0.1/hook"')

    with pytest.raises(NotifyConfigError) as raised:
        load_notify_config(settings.data_dir, environ={})

    assert "contains a user name or password" in str(raised.value)
    assert "s3cret" not in str(raised.value)


def test_password_type_error_hides_value(settings) -> None:
    write_config(
        settings, "[email]\n" + VALID_EMAIL + 'username = "u"\npassword = 123456'
    )

    with pytest.raises(NotifyConfigError) as raised:
        load_notify_config(settings.data_dir, environ={})

    assert "[email] password must be a non-empty string, got an integer" in str(
        raised.value
    )
    assert "123456" not in str(raised.value)


def test_missing_ca_file_names_fix(settings) -> None:
    write_config(settings, "[email]\n" + VALID_EMAIL + 'ca_file = "mail-ca.pem"')

    with pytest.raises(NotifyConfigError) as raised:
        load_notify_config(settings.data_dir, environ={})

    message = str(raised.value)
    assert message.startswith(f"{settings.data_dir / 'notify.toml'}: [email] ca_file ")
    assert f"'{settings.data_dir / 'mail-ca.pem'}' was not found" in message
    assert (
        "give the path of a PEM file with the certificate of the authority" in message
    )


def test_ca_file_without_certificate_rejected(settings, tls_ca) -> None:
    tls_ca.issue_cert("127.0.0.1").private_key_pem.write_to_path(
        str(settings.data_dir / "mail-ca.pem")
    )
    write_config(settings, "[email]\n" + VALID_EMAIL + 'ca_file = "mail-ca.pem"')

    with pytest.raises(NotifyConfigError) as raised:
        load_notify_config(settings.data_dir, environ={})

    assert "[email] ca_file" in str(raised.value)
    assert "contains no PEM certificate" in str(raised.value)


def test_relative_ca_file_from_data_dir(settings, tls_ca) -> None:
    tls_ca.cert_pem.write_to_path(str(settings.data_dir / "mail-ca.pem"))
    write_config(settings, "[email]\n" + VALID_EMAIL + 'ca_file = "mail-ca.pem"')

    config = load_notify_config(settings.data_dir, environ={})

    assert config.email.ca_file == settings.data_dir / "mail-ca.pem"
    assert config.email.starttls is True


def test_valid_config_defaults(settings) -> None:
    write_config(
        settings,
        "[email]\n" + VALID_EMAIL + 'username = "u"\npassword_env = "SMTP_PW"',
        "[webhook]\n" + 'url = "https://127.0.0.1:8443/hook?access_token=t0ken"',
        "[alerts]\ntimeliness_threshold = 0.6",
    )

    config = load_notify_config(settings.data_dir, environ={"SMTP_PW": "pw-123"})

    assert config.channels == ["email", "webhook"]
    assert config.email.port == 587
    assert config.email.starttls is True
    assert config.email.ca_file is None
    assert config.email.password == "pw-123"
    assert config.email.digest is False
    assert config.email.attempts == 3
    assert "pw-123" not in repr(config)
    assert config.webhook.target == "https://127.0.0.1:8443"
    assert "t0ken" not in repr(config)
    assert config.reminder_interval == dt.timedelta(hours=24)
    assert config.timeliness_threshold == 0.6


def test_plain_smtp_defaults_to_port_25(settings) -> None:
    write_config(settings, "[email]\n" + VALID_EMAIL + "starttls = false")

    config = load_notify_config(settings.data_dir, environ={})

    assert config.email.port == 25


# --- timeliness and run failures ------------------------------------------------------


def test_low_timeliness_alerts(con) -> None:
    insert_figures(con, "weibin", 10, 4)  # 40 %: below 50 %
    insert_figures(con, "muye", 10, 5)  # exactly 50 %: not below
    insert_figures(con, "hongqi", 0, 0)  # no double-publicity records
    insert_figures(con, "tax", 3, 1)  # 33.33 %

    alerts = low_timeliness_alerts(con, QUARTER, 0.5)

    assert [alert.unit_id for alert in alerts] == ["tax", "weibin"]
    weibin = alerts[1]
    assert weibin.kind == "low_timeliness"
    assert weibin.unit_name == "卫滨区"
    assert "40.00%" in weibin.message
    assert "below the threshold of 50%" in weibin.message
    assert weibin.details["dp_quarter_timely"] == 4
    assert weibin.details["dp_quarter_increment"] == 10
    assert "33.33%" in alerts[0].message


def test_timeliness_threshold_compared_exactly(con) -> None:
    insert_figures(con, "weibin", 10, 7)

    assert low_timeliness_alerts(con, QUARTER, 0.7) == []
    assert len(low_timeliness_alerts(con, QUARTER, 0.71)) == 1


def test_timeliness_alert_sent_once(settings, con, webhook) -> None:
    recorder, port = webhook
    write_config(settings, webhook_section(port))
    insert_figures(con, "weibin", 10, 4)

    first = run_check(con, settings, timeliness_threshold=0.5)
    second = run_check(con, settings, timeliness_threshold=0.5)

    assert first.low_timeliness_units == ["weibin"]
    kinds = [
        alert["kind"] for alert in json.loads(recorder.requests[0]["body"])["alerts"]
    ]
    assert kinds.count("silent_unit") == 3
    assert kinds.count("low_timeliness") == 1
    assert second.alerts_due == []
    assert len(recorder.requests) == 1


def test_timeliness_without_figures_notes(settings, con) -> None:
    summary = run_check(con, settings, timeliness_threshold=0.5)

    assert summary.low_timeliness_units == []
    assert any("no figures for 2018Q4" in note for note in summary.notes)


def test_run_failed_alert_always_due(con) -> None:
    alert = run_failed_alert(
        "quarterly_report", "run-1", "ValueError: bad cut-off\nTraceback ...", "2018Q4"
    )

    first = record_and_filter(con, [alert], AFTER_DEADLINE, dt.timedelta(days=1))
    second = record_and_filter(con, [alert], AFTER_DEADLINE, dt.timedelta(days=1))

    assert first == [alert]
    assert second == [alert]
    assert con.execute("SELECT count(*) FROM alerts_sent").fetchone()[0] == 0
    assert alert.subject() == "[credit-etl] run_failed 2018Q4: job quarterly_report"
    assert "Traceback" not in alert.message
    assert alert.details["error"] == "ValueError: bad cut-off"


def test_record_and_filter_deduplicates(con) -> None:
    alert = Alert("silent_unit", "2018Q4", "tax", "市税务局", "m")
    twin = Alert("silent_unit", "2018Q4", "tax", "市税务局", "m")

    first = record_and_filter(con, [alert, twin], AFTER_DEADLINE, dt.timedelta(days=1))
    second = record_and_filter(con, [alert], AFTER_DEADLINE, dt.timedelta(days=1))

    assert first == [alert]
    assert second == []


def test_alert_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="invalid alert kind 'late'"):
        Alert("late", "2018Q4", "tax", "市税务局", "m")
