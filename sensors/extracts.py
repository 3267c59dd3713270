"""A sensor that requests an ingest run when settled new files appear in incoming/."""

from __future__ import annotations

import hashlib
import json

import dagster as dg

from credit_etl.discovery import scan_incoming
from credit_etl.readers import fingerprint
from credit_etl.registry import load_units
from credit_etl.settings import Settings

RUN_KEY_TAG = "dagster/run_key"
# Bytes of new files hashed in one tick, so that a tick stays within Dagster's
# sensor timeout. New files beyond it wait for the next tick, and the first file
# always goes.
HASH_BUDGET_BYTES = 1 << 30
ENDED_WITHOUT_SUCCESS = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


def _digest(delivery) -> str:
    """Identify a settled delivery by path, size and modification time, in 16 hex."""
    text = f"{delivery.rel_path}|{delivery.size_bytes}|{delivery.mtime:.6f}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _read_cursor(cursor: str | None) -> dict[str, str]:
    """Return the cursor as {delivery digest: run key of the run that requested it}."""
    if not cursor:
        return {}
    value = json.loads(cursor)
    if isinstance(value, list):
        # Cursors of earlier versions list digests only, without run keys.
        return {digest: "" for digest in value}
    return value


def _failed_run_keys(instance: dg.DagsterInstance, run_keys: set[str]) -> set[str]:
    """Return the run keys whose run failed or was canceled before it landed files."""
    failed = set()
    for run_key in run_keys:
        if not run_key:
            continue
        runs = instance.get_runs(
            filters=dg.RunsFilter(tags={RUN_KEY_TAG: run_key}), limit=1
        )
        if runs and runs[0].status in ENDED_WITHOUT_SUCCESS:
            failed.add(run_key)
    return failed


def new_extract_sensor(job: dg.UnresolvedAssetJobDefinition, settings: Settings):
    """Request one ingest run per new set of settled deliveries.

    The cursor maps the digest of every delivery in incoming/ (path, size,
    modification time) to the run key that requested it, so a restart of the daemon
    neither loses nor repeats a request. Deliveries whose run failed or was canceled,
    for example because the server stopped during the run, are requested again.
    """
    # NOTE: a run whose process was killed outright stays STARTED, because the
    # default run launcher cannot check its worker. Marking it failed in the UI makes
    # the next tick request its files again.

    @dg.sensor(
        name="new_extract_sensor",
        job=job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Requests an ingest run when new settled files are in incoming/.",
    )
    def _sensor(context: dg.SensorEvaluationContext):
        scan = scan_incoming(
            settings.incoming_dir, load_units(), settings.settle_seconds
        )
        requested = _read_cursor(context.cursor)
        digests = [_digest(d) for d in scan.deliveries]
        current = set(digests)
        # Files that left incoming/ are dropped from the cursor, so it stays as
        # large as the folder.
        requested = {d: key for d, key in requested.items() if d in current}
        failed = _failed_run_keys(context.instance, set(requested.values()))
        pending = [
            (digest, delivery)
            for digest, delivery in zip(digests, scan.deliveries, strict=True)
            if requested.get(digest) in failed or digest not in requested
        ]
        if not pending:
            return dg.SkipReason(f"no new deliveries among {len(current)} files")

        # One run lands every new file, so a burst of files is one request. The run
        # key comes from each file's path and sha256 and from the failed runs before
        # it. So a tick evaluated twice requests the same run, which Dagster starts
        # once, and a file that was only touched makes no new run.
        lines: list[str] = []
        chosen: list[str] = []
        hashed = 0
        for digest, delivery in pending:
            if chosen and hashed + delivery.size_bytes > HASH_BUDGET_BYTES:
                break
            try:
                sha256 = fingerprint(delivery.path, sniff_encoding=False).sha256
            except OSError as error:
                context.log.warning(
                    f"incoming/{delivery.rel_path} could not be read: {error}"
                )
                continue
            hashed += delivery.size_bytes
            lines.append(f"{delivery.rel_path}|{sha256}")
            chosen.append(digest)
        if not chosen:
            return dg.SkipReason("no new delivery could be read; see the warnings")
        retried = [d for d in chosen if d in requested]
        previous = sorted({requested[d] for d in retried})
        run_key = hashlib.sha256(
            "\n".join([*sorted(lines), *previous]).encode()
        ).hexdigest()[:32]
        for digest in chosen:
            requested[digest] = run_key
        context.update_cursor(json.dumps(requested, sort_keys=True))
        if retried:
            context.log.info(
                f"requesting {len(retried)} deliveries again: their run ended without "
                "success"
            )
        return dg.RunRequest(
            run_key=run_key,
            tags={
                "credit_etl/new_files": str(len(chosen)),
                "credit_etl/retried_files": str(len(retried)),
            },
        )

    return _sensor
