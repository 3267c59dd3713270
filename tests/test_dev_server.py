"""`dagster dev` with its sensors on: extracts dropped into incoming/ land by themselves.

The server is stopped while an ingest run is in progress and started again. Every
file of the quarter must land exactly once, and no run key may be used twice.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
from conftest import stop_process_group

from credit_etl.cli import prepare_dagster_home
from credit_etl.demo import write_demo_data
from credit_etl.settings import DATA_DIR_ENV, REPO_ROOT, Settings
from credit_etl.warehouse import open_warehouse

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
UNITS = ["hrss", "weibin", "fengqiu", "environment", "transport", "muye", "tax"]
ACTIVE = (
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_server(settings: Settings, port: int, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "DAGSTER_HOME": str(settings.dagster_home),
        DATA_DIR_ENV: str(settings.data_dir),
        "CREDIT_ETL_SETTLE_SECONDS": "1",
    }
    command = [
        str(BIN / "dagster"),
        "dev",
        "-w",
        str(REPO_ROOT / "workspace.yaml"),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    with log.open("ab") as output:
        server = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/server_info", timeout=2
            ) as reply:
                if reply.status == 200:
                    return server
        except OSError:
            time.sleep(1)
    _stop_server(server)
    raise AssertionError(f"dagster dev did not answer in 120 s; see {log}")


def _stop_server(server: subprocess.Popen) -> None:
    stop_process_group(server, signal.SIGINT, wait=60)


def _quarter_files(staging: Path) -> list[Path]:
    """Return the staged files received in 2018Q4, by the date in their names."""
    return sorted(
        path
        for path in staging.rglob("*")
        if path.is_file()
        and path.parent.parent == staging
        and "20181001" <= path.name[:8] <= "20181231"
    )


def _drop(staging: Path, files: list[Path], incoming: Path) -> None:
    for path in files:
        target = incoming / path.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = target.with_name("~" + target.name)
        shutil.copyfile(path, scratch)
        os.replace(scratch, target)


def _landed_paths(settings: Settings) -> list[str]:
    with open_warehouse(settings, read_only=True) as con:
        rows = con.execute(
            "SELECT path FROM ledger WHERE status = 'landed' ORDER BY path"
        ).fetchall()
    return [row[0] for row in rows]


def test_dropped_quarter_lands_across_restart(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", settle_seconds=1)
    settings.ensure_dirs()
    prepare_dagster_home(settings)
    with open_warehouse(settings):
        pass
    staging = tmp_path / "staging"
    write_demo_data(staging, scale=0.01, units=UNITS)
    files = _quarter_files(staging)
    assert len(files) >= 10
    half = len(files) // 2
    expected = sorted(str(path.relative_to(staging)) for path in files)

    port = _free_port()
    log = tmp_path / "dagster-dev.log"
    server = _start_server(settings, port, log)
    try:
        _drop(staging, files[:half], settings.incoming_dir)
        with dg.DagsterInstance.from_config(str(settings.dagster_home)) as instance:
            deadline = time.monotonic() + 120
            started = []
            while time.monotonic() < deadline and not started:
                started = instance.get_runs(
                    filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])
                )
                time.sleep(0.2)
            assert started, f"no run started; see {log}"
        # Stop in the middle of the first ingest run.
        _stop_server(server)
        _drop(staging, files[half:], settings.incoming_dir)
        server = _start_server(settings, port, log)

        with dg.DagsterInstance.from_config(str(settings.dagster_home)) as instance:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                active = instance.get_runs(filters=dg.RunsFilter(statuses=list(ACTIVE)))
                if not active and _landed_paths(settings) == expected:
                    break
                time.sleep(3)
            runs = instance.get_runs()
    finally:
        _stop_server(server)

    landed = _landed_paths(settings)
    assert landed == expected, f"see {log}"
    run_keys = [run.tags.get("dagster/run_key") for run in runs]
    assert len(run_keys) == len(set(run_keys))
    assert all(run.job_name == "ingest_job" for run in runs)
    assert any(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
    with open_warehouse(settings, read_only=True) as con:
        per_path = con.execute(
            "SELECT count(*), count(DISTINCT path) FROM ledger WHERE status = 'landed'"
        ).fetchone()
    assert per_path == (len(files), len(files))
