"""A sensor that requests an ingest run when settled new files appear in incoming/."""

from __future__ import annotations

import hashlib
import json

import dagster as dg

from credit_etl.discovery import scan_incoming
from credit_etl.registry import load_units
from credit_etl.settings import Settings


def _digest(delivery) -> str:
    """Identify a settled delivery by path, size and modification time, in 16 hex."""
    text = f"{delivery.rel_path}|{delivery.size_bytes}|{delivery.mtime:.6f}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def new_extract_sensor(job: dg.UnresolvedAssetJobDefinition, settings: Settings):
    """Request one ingest run per new set of settled deliveries.

    The cursor contains a digest of every delivery in incoming/ (path, size,
    modification time), so a restart of the daemon neither loses nor repeats a
    request.
    """

    @dg.sensor(
        name="new_extract_sensor",
        job=job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="Requests an ingest run when new settled files are in incoming/.",
    )
    def _sensor(context: dg.SensorEvaluationContext):
        scan = scan_incoming(
            settings.incoming_dir, load_units(), settings.settle_seconds
        )
        seen = set(json.loads(context.cursor)) if context.cursor else set()
        current = {_digest(d) for d in scan.deliveries}
        new = sorted(current - seen)
        if not new:
            return dg.SkipReason(f"no new deliveries among {len(current)} files")
        # One run lands every new file, so a burst of files is one request. The
        # run key makes a repeated tick with the same files a no-op.
        run_key = hashlib.sha256("\n".join(new).encode()).hexdigest()[:32]
        # Files that left incoming/ are dropped from the cursor, so it stays as
        # large as the folder.
        context.update_cursor(json.dumps(sorted(current)))
        return dg.RunRequest(
            run_key=run_key, tags={"credit_etl/new_files": str(len(new))}
        )

    return _sensor
