"""The ``credit-etl`` command line."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import time
from pathlib import Path

from credit_etl.periods import Quarter
from credit_etl.settings import DATA_DIR_ENV, Settings, load_settings

log = logging.getLogger("credit_etl")

DAGSTER_YAML = """\
# Written by credit-etl; edit freely, it is not overwritten.
telemetry:
  enabled: false
nux:
  enabled: false
concurrency:
  # DuckDB allows one writing process per warehouse file. Every step that opens the
  # warehouse runs in the pool credit_etl_warehouse, and a pool without a limit of
  # its own gets this one. So backfills, sensor runs and the schedule take turns at
  # the warehouse, step by step, while their other work overlaps.
  pools:
    default_limit: 1
    granularity: op
  runs:
    max_concurrent_runs: 4
# A run that never got past STARTING (the server stopped while launching it) is
# marked failed, and the new-extract sensor then requests its files again.
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  max_resume_run_attempts: 0
"""

# The file that earlier versions wrote, replaced when found unchanged.
EARLIER_DAGSTER_YAML = """\
# Written by credit-etl; edit freely, it is not overwritten.
telemetry:
  enabled: false
nux:
  enabled: false
# DuckDB allows one writing process per warehouse file, so queued runs (backfills,
# sensor and schedule runs) start one at a time.
concurrency:
  runs:
    max_concurrent_runs: 1
"""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Dagster's storage migrations log every step at INFO.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        settings = load_settings(args.data_dir)
        return args.handler(args, settings)
    except (ValueError, RuntimeError, FileExistsError) as error:
        print(f"credit-etl: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader of the output (for example `head`) closed the pipe.
        sys.stderr.close()
        return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="credit-etl",
        description="Turn reporting units' credit extracts into the quarterly bulletin.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug lines")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--data-dir",
            help=f"data directory (default: ${DATA_DIR_ENV}, else var/ in the "
            "repository); holds incoming/, the warehouse, exports/ and the Dagster home",
        )
        sub.set_defaults(handler=handler)
        return sub

    run = command(
        "run",
        _run,
        "Ingest every new file in incoming/, then materialise one quarter's figures "
        "and annexes through Dagster.",
    )
    run.add_argument("--quarter", required=True, help="quarter to report, e.g. 2018Q4")
    run.add_argument(
        "--cutoff",
        help="cut-off date YYYY-MM-DD (default: the quarter's deadline, the 10th of "
        "the following month)",
    )

    command("ingest", _ingest, "Ingest every new settled file in incoming/.")

    deadlines = command(
        "check-deadlines",
        _check_deadlines,
        "Print the units that delivered no file between a quarter's first day and "
        "its deadline.",
    )
    deadlines.add_argument("--quarter", required=True, help="quarter, e.g. 2018Q4")
    deadlines.add_argument(
        "--notify",
        action="store_true",
        help="also send alerts through the channels of <data dir>/notify.toml, once "
        "per unit and quarter until the reminder interval passes",
    )
    deadlines.add_argument(
        "--now",
        help="moment of the check, ISO 8601 (default: now); without a time zone it "
        "is read as Asia/Shanghai",
    )

    feedback = command(
        "feedback",
        _feedback,
        "Write each unit's feedback workbook for a quarter: files, rejected rows "
        "with reasons, late double-publicity records and figures.",
    )
    feedback.add_argument("--quarter", required=True, help="quarter, e.g. 2018Q4")
    feedback.add_argument("--units", nargs="*", help="unit ids (default: all units)")

    files = command("files", _files, "List the file ledger.")
    files.add_argument("--json", action="store_true", help="one JSON object per line")

    demo_data = command(
        "demo-data",
        _demo_data,
        "Write demo extracts for 2018 into incoming/ (scale 1 reproduces the "
        "2018 bulletin's figures).",
    )
    demo_data.add_argument(
        "--scale", type=float, default=1.0, help="share of the 2018 volume (default 1)"
    )
    demo_data.add_argument(
        "--units", nargs="*", help="unit ids to write (default: all units)"
    )

    demo = command(
        "demo",
        _demo,
        "The main job: write demo extracts, then run every quarter of 2018.",
    )
    demo.add_argument(
        "--scale",
        type=float,
        default=0.01,
        help="share of the 2018 volume (default 0.01, about 1.2 million records)",
    )

    ui = command("ui", _ui, "Start the Dagster UI on this data directory.")
    ui.add_argument("--port", type=int, default=3000, help="TCP port (default 3000)")
    ui.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    return parser


# --------------------------------------------------------------------------- Dagster


def prepare_dagster_home(settings: Settings) -> None:
    """Point Dagster at the data directory's home so runs and cursors persist."""
    settings.ensure_dirs()
    config = settings.dagster_home / "dagster.yaml"
    if (
        not config.exists()
        or config.read_text(encoding="utf-8") == EARLIER_DAGSTER_YAML
    ):
        config.write_text(DAGSTER_YAML, encoding="utf-8")
    os.environ["DAGSTER_HOME"] = str(settings.dagster_home)
    os.environ[DATA_DIR_ENV] = str(settings.data_dir)


def require_reportable(quarter: Quarter) -> str:
    """Return the quarter's partition key, or raise if the report has no such quarter."""
    from assets.partitions import partition_key, quarterly_partitions

    key = partition_key(quarter)
    if not quarterly_partitions.has_partition_key(key):
        first = quarterly_partitions.get_first_partition_key()
        last = quarterly_partitions.get_last_partition_key()
        raise ValueError(
            f"{quarter.label} cannot be reported: quarters run from "
            f"{Quarter.containing(dt.date.fromisoformat(first)).label} to "
            f"{Quarter.containing(dt.date.fromisoformat(last)).label}, and a quarter "
            "is reported once it has ended"
        )
    return key


def run_quarter(
    settings: Settings, quarter: Quarter, cutoff: dt.date | None
) -> list[Path]:
    """Run the ingest job, then the quarterly report job, recorded in the Dagster home."""
    prepare_dagster_home(settings)
    import dagster as dg

    from assets.definitions import INGEST_JOB, REPORT_JOB, build_definitions
    from credit_etl.warehouse import open_warehouse

    key = require_reportable(quarter)
    # A warehouse that another program has open fails here, with that program's
    # name, before a Dagster run is recorded as failed.
    with open_warehouse(settings, purpose="credit-etl run"):
        pass
    definitions = build_definitions(settings)
    with dg.DagsterInstance.get() as instance:
        _fail_abandoned_runs(instance)
        tags = {"credit_etl/launched_by": "cli", "credit_etl/pid": str(os.getpid())}
        quiet = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
        ingest = definitions.resolve_job_def(INGEST_JOB).execute_in_process(
            instance=instance, tags=tags, run_config=quiet, raise_on_error=False
        )
        if not ingest.success:
            raise RuntimeError(f"ingest run {ingest.run_id} failed; see the Dagster UI")
        run_config = dict(quiet)
        if cutoff:
            figures_config = {"config": {"cutoff": cutoff.isoformat()}}
            run_config["ops"] = {"quarter_figures": figures_config}
        report = definitions.resolve_job_def(REPORT_JOB).execute_in_process(
            instance=instance,
            partition_key=key,
            run_config=run_config,
            tags={**tags, "credit_etl/quarter": quarter.label},
            raise_on_error=False,
        )
        if not report.success:
            raise RuntimeError(
                f"report run {report.run_id} for {quarter.label} failed; see the "
                "Dagster UI"
            )
    folder = settings.exports_dir / quarter.label
    return [folder / f"annex{n}.xlsx" for n in range(1, 5)]


def _fail_abandoned_runs(instance) -> None:
    """Mark runs of this command whose process is gone as failed, not running."""
    import dagster as dg

    records = instance.get_runs(
        filters=dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING],
            tags={"credit_etl/launched_by": "cli"},
        )
    )
    for run in records:
        pid = int(run.tags.get("credit_etl/pid", "0"))
        if pid and _process_alive(pid):
            continue
        instance.report_run_failed(
            run, message="the credit-etl process ended during the run"
        )
        # A step of the killed run may have claimed the warehouse pool's only slot,
        # and without a daemon nothing else frees it.
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        log.warning("marked run %s as failed: its process %s is gone", run.run_id, pid)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------- handlers


def _parse_cutoff(text: str | None, quarter: Quarter) -> dt.date | None:
    if not text:
        return None
    try:
        cutoff = dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"invalid cut-off date {text!r}: write it as YYYY-MM-DD, e.g. 2019-01-10"
        ) from None
    if cutoff < quarter.end:
        raise ValueError(
            f"cut-off date {cutoff} is before the end of {quarter.label} "
            f"({quarter.end}); give a date on or after the quarter's last day"
        )
    return cutoff


def _require_data_dir(settings: Settings) -> None:
    """Reject a data directory that does not exist, which is usually a typing error."""
    if not settings.data_dir.is_dir():
        raise ValueError(
            f"data directory {settings.data_dir} does not exist; check --data-dir or "
            f"${DATA_DIR_ENV}, or create it with an incoming/<unit_id>/ folder per unit "
            "(`credit-etl demo` creates one with demo data)"
        )


def _warn_if_no_deliveries(settings: Settings) -> None:
    incoming = settings.incoming_dir
    if not incoming.is_dir() or not any(incoming.iterdir()):
        log.warning(
            "%s contains no files, so every figure will be zero. Units deliver into "
            "incoming/<unit_id>/<YYYYMMDD>_<category>.csv|xlsx",
            incoming,
        )


def _run(args, settings: Settings) -> int:
    quarter = Quarter.parse(args.quarter)
    cutoff = _parse_cutoff(args.cutoff, quarter)
    _require_data_dir(settings)
    _warn_if_no_deliveries(settings)
    started = time.monotonic()
    paths = run_quarter(settings, quarter, cutoff)
    print(f"{quarter.label}: annexes written in {time.monotonic() - started:.1f} s:")
    for path in paths:
        print(f"  {path}")
    return 0


def _ingest(args, settings: Settings) -> int:
    from credit_etl.ingest import ingest_incoming
    from credit_etl.warehouse import open_warehouse

    _require_data_dir(settings)
    _warn_if_no_deliveries(settings)
    with open_warehouse(settings, purpose="credit-etl ingest") as con:
        report = ingest_incoming(con, settings)
    for result in report.results:
        print(
            f"{result.status:9} incoming/{result.rel_path}: read {result.rows_read or 0}, "
            f"landed {result.rows_landed or 0}, rejected {result.rows_rejected or 0}, "
            f"repeated {result.rows_repeated or 0}"
            + (f" ({result.error})" if result.error else "")
        )
    for problem in report.problems:
        print(f"not read  incoming/{problem.rel_path}: {problem.problem}")
    for skipped in report.skipped:
        print(f"waiting   incoming/{skipped} (read once it settles)")
    print(json.dumps(report.summary()))
    return 0


def _check_deadlines(args, settings: Settings) -> int:
    from credit_etl.deadlines import check_deadlines
    from credit_etl.warehouse import open_warehouse

    quarter = Quarter.parse(args.quarter)
    now = None
    if args.now:
        try:
            now = dt.datetime.fromisoformat(args.now)
        except ValueError:
            raise ValueError(
                f"invalid --now {args.now!r}: write it as 2019-01-11T09:00 or "
                "2019-01-11T09:00+08:00"
            ) from None
    _require_data_dir(settings)
    summary = None
    if args.notify:
        from credit_etl.notify import notify_deadlines

        with open_warehouse(settings, purpose="credit-etl check-deadlines") as con:
            check = check_deadlines(con, settings, quarter, now)
            summary = notify_deadlines(con, settings, quarter, now)
    elif settings.warehouse_path.exists():
        with open_warehouse(settings, read_only=True) as con:
            check = check_deadlines(con, settings, quarter, now)
    else:
        check = check_deadlines(None, settings, quarter, now)
    state = "passed" if check.passed else "not reached yet"
    print(
        f"{quarter.label}: deadline {check.deadline:%Y-%m-%d %H:%M:%S} Asia/Shanghai "
        f"({state}); {len(check.silent)} units delivered no file:"
    )
    for unit in check.silent:
        print(f"  {unit.unit_id}\t{unit.name_zh}")
    if summary is not None:
        print(json.dumps(summary.as_dict(), ensure_ascii=False))
    return 0


def _feedback(args, settings: Settings) -> int:
    from credit_etl.feedback import write_feedback
    from credit_etl.figures import compute_figures
    from credit_etl.warehouse import open_warehouse

    quarter = Quarter.parse(args.quarter)
    require_reportable(quarter)
    with open_warehouse(settings, purpose="credit-etl feedback") as con:
        exists = con.execute(
            "SELECT count(*) FROM unit_figures WHERE period = ?", [quarter.label]
        ).fetchone()[0]
        if not exists:
            compute_figures(con, settings, quarter)
        paths = write_feedback(con, settings, quarter, args.units)
    print(
        f"{len(paths)} feedback workbooks in {settings.exports_dir / quarter.label / 'feedback'}"
    )
    return 0


LEDGER_FIELDS = (
    "file_id",
    "path",
    "unit_id",
    "category",
    "received_date",
    "sha256",
    "size_bytes",
    "encoding",
    "rows_read",
    "rows_landed",
    "rows_rejected",
    "rows_repeated",
    "status",
    "error",
    "duplicate_of",
    "notes",
    "ingested_at",
)


def _files(args, settings: Settings) -> int:
    from credit_etl.warehouse import open_warehouse

    if not settings.warehouse_path.exists():
        print("no warehouse yet; run `credit-etl ingest` first", file=sys.stderr)
        return 1
    with open_warehouse(settings, read_only=True) as con:
        rows = con.execute(
            f"""SELECT l.{", l.".join(LEDGER_FIELDS[:-3])}, d.path, l.notes, l.ingested_at
                FROM ledger l LEFT JOIN ledger d ON d.file_id = l.duplicate_of
                ORDER BY l.file_id"""
        ).fetchall()
    if not rows and not args.json:
        print("the ledger is empty: no file has been ingested yet")
    for row in rows:
        record = dict(zip(LEDGER_FIELDS, row, strict=True))
        record["received_date"] = (
            record["received_date"].isoformat() if record["received_date"] else None
        )
        record["ingested_at"] = record["ingested_at"].isoformat(timespec="seconds")
        record["notes"] = json.loads(record["notes"]) if record["notes"] else []
        if args.json:
            print(json.dumps(record, ensure_ascii=False))
        else:
            print(
                f"{record['file_id']:>5} {record['status']:9} {record['path']}  "
                f"read {record['rows_read'] or 0} landed {record['rows_landed'] or 0} "
                f"rejected {record['rows_rejected'] or 0} repeated "
                f"{record['rows_repeated'] or 0}"
                + (f"  {record['error']}" if record["error"] else "")
            )
    return 0


def _demo_data(args, settings: Settings) -> int:
    from credit_etl.demo import write_demo_data

    settings.ensure_dirs()
    started = time.monotonic()
    summary = write_demo_data(settings.incoming_dir, scale=args.scale, units=args.units)
    print(
        f"wrote {summary.total_records:,} records in {len(summary.files):,} files to "
        f"{settings.incoming_dir} in {time.monotonic() - started:.1f} s"
    )
    return 0


def _demo(args, settings: Settings) -> int:
    from credit_etl.demo import write_demo_data

    settings.ensure_dirs()
    started = time.monotonic()
    delivered = [p for p in settings.incoming_dir.rglob("*") if p.is_file()]
    if delivered:
        # A second run reports on what is there: writing demo files again would
        # deliver every record a second time.
        print(
            f"{settings.incoming_dir} already holds {len(delivered):,} files; "
            "reporting on them (`make clean-data` removes the data directory to "
            "start over)"
        )
    else:
        summary = write_demo_data(settings.incoming_dir, scale=args.scale)
        print(
            f"demo data: {summary.total_records:,} records in "
            f"{len(summary.files):,} files"
        )
    # The demo files were complete when written, so they need not settle.
    os.environ["CREDIT_ETL_SETTLE_SECONDS"] = "0"
    settings = load_settings(settings.data_dir)
    for q in range(1, 5):
        quarter = Quarter(2018, q)
        paths = run_quarter(settings, quarter, None)
        print(f"{quarter.label}: {paths[0].parent}")
    print(f"demo finished in {time.monotonic() - started:.1f} s")
    print(f"annexes of the annual report: {settings.exports_dir / '2018Q4'}")
    return 0


def _ui(args, settings: Settings) -> int:
    from credit_etl.settings import REPO_ROOT

    prepare_dagster_home(settings)
    # The dagster program sits beside this interpreter, which need not be on PATH.
    beside = Path(sys.executable).parent / "dagster"
    command = [
        str(beside) if beside.exists() else "dagster",
        "dev",
        "-w",
        str(REPO_ROOT / "workspace.yaml"),
        "-h",
        args.host,
        "-p",
        str(args.port),
    ]
    print(f"DAGSTER_HOME={settings.dagster_home} {' '.join(command)}")
    os.chdir(REPO_ROOT)
    os.execvp(command[0], command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
