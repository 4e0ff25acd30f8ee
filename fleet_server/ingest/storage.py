"""What the storage is doing on its own: which telemetry mode is in use and why, with its
settings, and, with TimescaleDB, the extension's background jobs (compression, retention) and
their failures, from `timescaledb_information.job_stats` and `job_errors`.

A job that fails does not stop anything at once: the extension retries it, and the operator
hears of it only from the server log. So `/metrics` exports each job's failures and the ops page
lists the failing jobs with the server's error (`GET /api/v1/storage`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from fleet_server.db.fetch import fetch_rows
from fleet_server.db.timescale import Decision
from fleet_server.ingest.telemetry import StorageMode, TelemetryStore

# The extension's jobs in this database: (job, proc, hypertable, last status, started, runs, failures, next).
JOBS: Final = """
SELECT j.job_id, j.proc_name, COALESCE(j.hypertable_name, ''), COALESCE(s.last_run_status, 'never run'),
       s.last_run_started_at, COALESCE(s.total_runs, 0), COALESCE(s.total_failures, 0), j.next_start
FROM timescaledb_information.jobs j
LEFT JOIN timescaledb_information.job_stats s USING (job_id)
ORDER BY j.job_id
"""
# Its errors since a time, newest first: (job, proc, started, finished, sqlerrcode, message).
ERRORS: Final = """
SELECT job_id, proc_name, start_time, finish_time, COALESCE(sqlerrcode, ''), COALESCE(err_message, '')
FROM timescaledb_information.job_errors WHERE start_time >= %s
ORDER BY start_time DESC LIMIT %s
"""
ERRORS_SHOWN: Final = 20
ERRORS_SINCE: Final = timedelta(days=1)


class Job(BaseModel):
    job_id: int
    proc: str  # policy_compression, policy_retention, ...
    hypertable: str
    last_run_status: str  # Success, Failed, or "never run"
    last_run_started_at: datetime | None
    total_runs: int
    total_failures: int
    next_start: datetime | None


class JobError(BaseModel):
    job_id: int
    proc: str
    started_at: datetime | None
    finished_at: datetime | None
    sqlerrcode: str
    message: str


class StorageStatus(BaseModel):
    """The telemetry storage in use, why, its settings, and the extension's jobs (none natively)."""

    mode: str
    reason: str
    retention_days: int
    compress_after_days: int | None  # None: native partitions have no compression
    jobs: list[Job]
    errors: list[JobError]  # the last day's, newest first

    @property
    def failing(self) -> list[Job]:
        return [job for job in self.jobs if job.last_run_status == "Failed"]


class Storage:
    """The storage's own state for the ops page and `/metrics`."""

    def __init__(self, pool: AsyncConnectionPool, telemetry: TelemetryStore, decision: Decision) -> None:
        self._pool = pool
        self._telemetry = telemetry
        self._decision = decision

    async def status(self, now: datetime) -> StorageStatus:
        timescale = self._telemetry.mode is StorageMode.TIMESCALEDB
        jobs: list[Job] = []
        errors: list[JobError] = []
        if timescale:
            jobs = [Job(**dict(zip(Job.model_fields, row, strict=True))) for row in await fetch_rows(self._pool, JOBS)]
            errors = [
                JobError(**dict(zip(JobError.model_fields, row, strict=True)))
                for row in await fetch_rows(self._pool, ERRORS, (now - ERRORS_SINCE, ERRORS_SHOWN))
            ]
        reason = self._decision.reason
        if self._decision.timescale and not timescale:
            reason = "timescaledb loaded, but the telemetry tables were made as native partitions before it was"
        return StorageStatus(
            mode=self._telemetry.mode.value,
            reason=reason,
            retention_days=self._telemetry.retention_days,
            compress_after_days=self._telemetry.compress_after_days if timescale else None,
            jobs=jobs,
            errors=errors,
        )


def storage_metrics(status: StorageStatus) -> str:
    """Prometheus text: the storage mode, and each TimescaleDB job's runs and failures."""
    timescale = int(status.mode == StorageMode.TIMESCALEDB.value)
    lines = [
        "# HELP haodian_storage_timescaledb 1 when telemetry is in TimescaleDB hypertables, 0 for native partitions.",
        "# TYPE haodian_storage_timescaledb gauge",
        f"haodian_storage_timescaledb {timescale}",
        "# HELP haodian_timescaledb_job_failures_total Runs of a TimescaleDB background job that failed.",
        "# TYPE haodian_timescaledb_job_failures_total counter",
    ]
    labels = [f'job_id="{j.job_id}",proc="{j.proc}",hypertable="{j.hypertable}"' for j in status.jobs]
    lines += [
        f"haodian_timescaledb_job_failures_total{{{lab}}} {j.total_failures}"
        for lab, j in zip(labels, status.jobs, strict=True)
    ]
    lines += [
        "# HELP haodian_timescaledb_job_last_run_failed 1 when the job's last run failed.",
        "# TYPE haodian_timescaledb_job_last_run_failed gauge",
    ]
    lines += [
        f"haodian_timescaledb_job_last_run_failed{{{lab}}} {int(j.last_run_status == 'Failed')}"
        for lab, j in zip(labels, status.jobs, strict=True)
    ]
    return "\n".join(lines) + "\n"
