"""Benchmark: the product's ingest and report against a bare DuckDB load of the same files.

Usage: .venv/bin/python bench/run.py --scale 0.1 [--work-dir DIR] [--keep]

One run, on one set of files, in this order:
  1. write the demo extracts of 2018 at the given scale (not timed against the floor);
  2. floor: a bare DuckDB CREATE TABLE AS SELECT * FROM read_csv(...) of the UTF-8 CSV
     files, one table per category;
  3. ingest: `credit-etl ingest` of every file;
  4. report: `credit-etl run --quarter 2018Q4` (no new files, figures and annexes),
     whose annex cells are then compared with the values derived from the records
     and, at scale 1, with the printed bulletin;
  5. re-run: the same command again;
  6. one new file: a small extract for one unit, then the same command.
Each step runs in its own process, which reports its own peak resident memory. The
last line is `ingest/floor ratio: X.XX`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

# Runs in a child process: the step's code, then one JSON line with its peak memory.
# VmHWM is the peak of the memory map made at exec; ru_maxrss would also count the
# parent's pages that the fork copied before the exec.
CHILD = """
import json, sys, time
started = time.monotonic()
{body}
seconds = time.monotonic() - started
with open("/proc/self/status") as handle:
    peak = int(handle.read().split("VmHWM:")[1].split()[0]) * 1024
print("BENCH " + json.dumps({{"seconds": seconds, "peak": peak, "rows": rows}}))
"""

FLOOR = """
import duckdb, pathlib
files = {}
for path in pathlib.Path(sys.argv[1]).rglob("*.csv"):
    import codecs
    try:
        with path.open("rb") as handle:
            codecs.getincrementaldecoder("utf-8")().decode(handle.read(4096))
    except UnicodeDecodeError:
        continue
    category = path.name.split("_", 1)[1].rsplit(".", 1)[0]
    files.setdefault(category, []).append(str(path))
con = duckdb.connect(sys.argv[2], config={"threads": "2"})
rows = 0
for category, paths in sorted(files.items()):
    table = "floor_" + "".join(c if c.isalnum() else "_" for c in category)
    con.execute(
        f"CREATE TABLE {table} AS SELECT * FROM read_csv($files, union_by_name = true)",
        {"files": paths},
    )
    rows += con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
con.close()
"""

CLI = """
from credit_etl.cli import main
import duckdb
code = main(sys.argv[1:])
assert code == 0, code
data_dir = sys.argv[sys.argv.index("--data-dir") + 1]
con = duckdb.connect(data_dir + "/warehouse.duckdb", read_only=True)
rows = con.execute("SELECT coalesce(sum(rows_read), 0) FROM ledger").fetchone()[0]
con.close()
"""


def run_step(body: str, *args: str) -> dict:
    env = {**os.environ, "CREDIT_ETL_SETTLE_SECONDS": "0"}
    result = subprocess.run(
        [PYTHON, "-c", CHILD.format(body=body), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"step failed: {args}\n{result.stderr[-3000:]}")
    for line in result.stdout.splitlines():
        if line.startswith("BENCH "):
            return json.loads(line[6:])
    raise RuntimeError(f"step printed no figures: {args}\n{result.stderr[-2000:]}")


def write_small_file(incoming: Path) -> None:
    folder = incoming / "hongqi"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "20181228_penalty_bench.csv"
    path.write_text(
        "行政相对人名称,统一社会信用代码,行政处罚决定书文号,处罚决定日期\n"
        "新乡市测试有限公司,91410700736108233M,新红罚〔2018〕990001号,2018-12-25\n",
        encoding="utf-8",
    )
    old = time.time() - 60
    os.utime(path, (old, old))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scale", type=float, default=0.1, help="share of 2018's volume"
    )
    parser.add_argument(
        "--work-dir", help="folder for the data (default: a temp folder)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the data afterwards")
    args = parser.parse_args()

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="credit-etl-bench-"))
    data_dir = work / "data"
    if data_dir.exists():
        shutil.rmtree(data_dir)
    (data_dir / "incoming").mkdir(parents=True)

    started = time.monotonic()
    sys.path.insert(0, str(REPO))
    from credit_etl.bulletin import compare_annexes
    from credit_etl.demo import write_demo_data

    summary = write_demo_data(data_dir / "incoming", scale=args.scale)
    generate_seconds = time.monotonic() - started
    size = sum(
        p.stat().st_size for p in (data_dir / "incoming").rglob("*") if p.is_file()
    )

    steps = {}
    steps["floor"] = run_step(
        FLOOR, str(data_dir / "incoming"), str(work / "floor.duckdb")
    )
    steps["ingest"] = run_step(CLI, "ingest", "--data-dir", str(data_dir))
    report = ["run", "--quarter", "2018Q4", "--data-dir", str(data_dir)]
    steps["report 2018Q4"] = run_step(CLI, *report)
    comparison = compare_annexes(
        {n: data_dir / "exports" / "2018Q4" / f"annex{n}.xlsx" for n in range(1, 5)},
        summary.expected_annexes_path,
        summary.inconsistent_cells_path,
        with_printed=args.scale == 1,
    )
    steps["re-run, no new files"] = run_step(CLI, *report)
    write_small_file(data_dir / "incoming")
    steps["re-run, one new file"] = run_step(CLI, *report)

    floor = steps["floor"]["seconds"]
    print(
        f"scale {args.scale}: {summary.total_records:,} records in "
        f"{len(summary.files):,} files, {size / 1e9:.2f} GB, written in "
        f"{generate_seconds:.1f} s"
    )
    print(
        f"{'step':24} {'rows':>13} {'seconds':>9} {'rows/s':>12} {'peak MiB':>9} {'/floor':>7}"
    )
    for name, step in steps.items():
        rate = step["rows"] / step["seconds"] if step["seconds"] else 0
        print(
            f"{name:24} {step['rows']:>13,} {step['seconds']:>9.1f} {rate:>12,.0f} "
            f"{step['peak'] / 2**20:>9.0f} {step['seconds'] / floor:>7.2f}"
        )
    print(
        f"annex cells of 2018Q4 equal to the values derived from the records: "
        f"{comparison.derived_compared - len(comparison.derived_mismatches):,} of "
        f"{comparison.derived_compared:,}"
    )
    if args.scale == 1:
        print(
            "annex cells of 2018Q4 equal to the printed bulletin, where it is "
            f"consistent: {comparison.printed_compared - len(comparison.printed_mismatches):,}"
            f" of {comparison.printed_compared:,}"
        )
    for mismatch in (comparison.derived_mismatches + comparison.printed_mismatches)[
        :20
    ]:
        print(f"  mismatch: {mismatch}")
    if not args.keep and not args.work_dir:
        shutil.rmtree(work)
    print(f"ingest/floor ratio: {steps['ingest']['seconds'] / floor:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
