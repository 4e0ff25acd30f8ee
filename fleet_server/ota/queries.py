"""The SQL of OTA: releases, campaigns, lanes and targets, the devices' reports, and the
conductor's round (reconcile, time out, retry, move lanes, offer, finish).

Target states are the device's own (`OtaState`) and the campaign's (pending, offered,
unreachable: `policy`); campaign and lane statuses are `CampaignStatus`. All come in through
`statement()`, never typed into the SQL.
"""

from __future__ import annotations

from typing import Final

from firmware_protocols.messages import OtaFailure, OtaState
from fleet_server.db.fetch import statement
from fleet_server.db.hierarchy import DEVICE_HIERARCHY
from fleet_server.ota.policy import OFFERED, PENDING, UNREACHABLE, CampaignStatus

_COMMITTED, _ROLLED_BACK, _FAILED = OtaState.COMMITTED, OtaState.ROLLED_BACK, OtaState.FAILED
_STATES: Final[dict[str, str | frozenset[str]]] = {
    "pending": PENDING,
    "offered": OFFERED,
    "committed": _COMMITTED,
    "rolled_back": _ROLLED_BACK,
    "failed": _FAILED,
    "unreachable": UNREACHABLE,
    "boot": OtaFailure.BOOT,
    "interrupted": OtaFailure.INTERRUPTED,
    "finished": frozenset({_COMMITTED, _ROLLED_BACK, _FAILED}),
    "failures": frozenset({_ROLLED_BACK, _FAILED}),
    "unreported": frozenset({PENDING, OFFERED, UNREACHABLE}),
    "at_rest": frozenset({_COMMITTED, _ROLLED_BACK, _FAILED, UNREACHABLE, PENDING}),
    "running": CampaignStatus.RUNNING,
    "paused": CampaignStatus.PAUSED,
    "completed": CampaignStatus.COMPLETED,
    "aborted": CampaignStatus.ABORTED,
    "live": frozenset({CampaignStatus.RUNNING, CampaignStatus.PAUSED}),
}

# -- releases -----------------------------------------------------------------------------

# A release, unless one of that name and version exists (releases are immutable).
INSERT_RELEASE: Final = (
    "INSERT INTO ota_releases (name, version, manifest, sha256, size, models) "
    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (name, version) DO NOTHING"
)
# The manifest stored for a release: (manifest).
RELEASE_MANIFEST: Final = "SELECT manifest FROM ota_releases WHERE name = %s AND version = %s"
_RELEASE_COLUMNS: Final = "SELECT name, version, models, size, sha256, created_at, uploaded_at FROM ota_releases"
# One release. Rows: ReleaseView.
RELEASE: Final = _RELEASE_COLUMNS + " WHERE name = %s AND version = %s"
# Every release, newest first. Rows: ReleaseView.
RELEASES: Final = _RELEASE_COLUMNS + " ORDER BY created_at DESC"
# The release's artifact is stored.
ARTIFACT_UPLOADED: Final = "UPDATE ota_releases SET uploaded_at = now() WHERE name = %s AND version = %s"

# -- campaigns ----------------------------------------------------------------------------

# Devices a campaign may target: of a model the release is for, matching the selector's
# conditions (each NULL matches all), placed by the one hierarchy (a rebound device belongs to
# its merchant's store), with the merchant's business hours and time zone for the install window.
TARGET_CANDIDATES: Final = (
    "SELECT d.device_id, d.model, d.firmware,"  # noqa: S608 - constant fragments; values are parameters.
    " COALESCE(m.business_open::text, '08:00') AS business_open,"
    " COALESCE(m.business_close::text, '22:00') AS business_close,"
    " COALESCE(m.utc_offset_min, 480) AS utc_offset_min"
    f" FROM {DEVICE_HIERARCHY}"
    " WHERE d.model = ANY(%(release_models)s) AND d.model IS NOT NULL"
    " AND (%(models)s::text[] IS NULL OR d.model = ANY(%(models)s))"
    " AND (%(versions)s::text[] IS NULL OR d.firmware = ANY(%(versions)s))"
    " AND (%(cities)s::text[] IS NULL OR di.city_id = ANY(%(cities)s))"
    " AND (%(districts)s::text[] IS NULL OR st.district_id = ANY(%(districts)s))"
    " AND (%(stores)s::text[] IS NULL OR st.store_id = ANY(%(stores)s))"
    " AND (%(tags)s::text[] IS NULL OR d.tags && %(tags)s::text[])"
    " AND (%(devices)s::text[] IS NULL OR d.device_id = ANY(%(devices)s))"
)
INSERT_CAMPAIGN: Final = statement(
    "INSERT INTO ota_campaigns (campaign_id, release_name, version, selector, policy, status) "
    "VALUES (%s, %s, %s, %s, %s, {running})",
    **_STATES,
)
# A running lane per model: (campaign_id, models).
INSERT_LANES: Final = statement(
    "INSERT INTO ota_lanes (campaign_id, model, status) SELECT %s, unnest(%s::text[]), {running}", **_STATES
)
# Every target of a new campaign, as unnest() columns.
INSERT_TARGETS: Final = (
    "INSERT INTO ota_targets (campaign_id, device_id, target_version, state, model, wave, from_version,"
    " window_start, window_end, utc_offset_min, targeted_at)"
    " SELECT *, now() FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[],"
    " %s::int[], %s::text[], %s::text[], %s::text[], %s::int[])"
)
# Campaign ids, newest first: (campaign_id).
CAMPAIGN_IDS: Final = "SELECT campaign_id FROM ota_campaigns ORDER BY created_at DESC"
# One campaign's row.
CAMPAIGN: Final = "SELECT * FROM ota_campaigns WHERE campaign_id = %s"
# A campaign's targets by lane and state: (model, state, n).
TARGET_COUNTS: Final = (
    "SELECT model, state, count(*) AS n FROM ota_targets WHERE campaign_id = %s GROUP BY model, state"
)
# A campaign's lanes.
LANES: Final = "SELECT * FROM ota_lanes WHERE campaign_id = %s ORDER BY model"
# A campaign's failures by code (a target that timed out has none): (failure, n).
FAILURES: Final = statement(
    "SELECT COALESCE(failure, 'timeout') AS failure, count(*) AS n FROM ota_targets"
    " WHERE campaign_id = %s AND state = ANY({failures}) GROUP BY 1",
    **_STATES,
)
# Targets of a campaign that had a trial boot cut from outside (power, kill): (n).
INTERRUPTED: Final = statement(
    "SELECT count(DISTINCT device_id) AS n FROM ota_reports WHERE campaign_id = %s AND failure = {interrupted}",
    **_STATES,
)
# Targets of a campaign that ended in the last ten minutes (for the ETA): (n). Parameters: the
# campaign id and the ended states.
RECENTLY_ENDED: Final = (
    "SELECT count(*) AS n FROM ota_targets WHERE campaign_id = %s AND state = ANY(%s)"
    " AND finished_at > now() - interval '10 minutes'"
)
# A campaign's status, locked for an operator's action: (status).
LOCK_CAMPAIGN: Final = "SELECT status FROM ota_campaigns WHERE campaign_id = %s FOR UPDATE"
# An operator's retry: the targets that rolled back or failed are pending again, attempts reset.
RETRY_FAILED: Final = statement(
    "UPDATE ota_targets SET state = {pending}, attempts = 0, failure = NULL, reason = NULL,"
    " updated_at = now() WHERE campaign_id = %s AND state = ANY({failures})",
    **_STATES,
)
# Every lane of a campaign running again.
RESUME_LANES: Final = statement(
    "UPDATE ota_lanes SET status = {running}, status_reason = NULL, updated_at = now() WHERE campaign_id = %s",
    **_STATES,
)
# A campaign's status and why: (status, reason, campaign_id).
SET_CAMPAIGN_STATUS: Final = (
    "UPDATE ota_campaigns SET status = %s, status_reason = %s, updated_at = now() WHERE campaign_id = %s"
)

# -- device reports -----------------------------------------------------------------------

# Every report as it came, as unnest() columns.
INSERT_REPORTS: Final = (
    "INSERT INTO ota_reports (campaign_id, device_id, ts, state, running, attempt, failure, reason)"
    " SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::text[], %s::text[],"
    " %s::int[], %s::text[], %s::text[])"
)

# -- the conductor's round ----------------------------------------------------------------

# A lane moves to its next wave: (campaign_id, model).
NEXT_WAVE: Final = "UPDATE ota_lanes SET wave = wave + 1, updated_at = now() WHERE campaign_id = %s AND model = %s"
# A lane stops, paused or completed: (status, reason, campaign_id, model).
SET_LANE_STATUS: Final = (
    "UPDATE ota_lanes SET status = %s, status_reason = %s, updated_at = now() WHERE campaign_id = %s AND model = %s"
)
# The round's lock, for this transaction: (mine).
ROUND_LOCK: Final = "SELECT pg_try_advisory_xact_lock(%s) AS mine"

# The latest report of each target sets its state (a committed target stays committed).
APPLY_REPORTS: Final = statement(
    """
UPDATE ota_targets t SET state = r.state, bytes_done = r.bytes_done, failure = r.failure, reason = r.reason,
    from_version = COALESCE(t.from_version, r.running), updated_at = now(),
    finished_at = CASE WHEN r.state = ANY({finished}) THEN now() END
FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[], %s::text[])
    AS r(campaign_id, device_id, state, bytes_done, failure, reason, running),
    ota_campaigns c
WHERE t.campaign_id = r.campaign_id AND t.device_id = r.device_id AND c.campaign_id = t.campaign_id
  AND c.status = ANY({live})
  AND t.state <> {pending} AND NOT (t.state = {committed} AND r.state <> {committed})
""",
    **_STATES,
)

# The version a device says it runs in its hello is the truth where its reports are missing: a
# target whose device runs the new version is committed, and a committed one whose device came
# back on another version (it rolled back later) is rolled back, so it can be offered again.
RECONCILE: Final = statement(
    """
WITH done AS (
    UPDATE ota_targets t SET state = {committed}, failure = NULL, reason = NULL, finished_at = now(),
        updated_at = now()
    FROM devices d, ota_campaigns c
    WHERE d.device_id = t.device_id AND c.campaign_id = t.campaign_id AND c.status = ANY({live})
      AND t.state <> {committed} AND d.firmware = t.target_version
      -- Only where the device's own reports are missing: none yet, or none within the timeout.
      -- A device that is reporting is followed by its reports, not its hello: a trial boot says
      -- hello with the new version before its health check decides, and its reports may be
      -- stored a moment after its hello.
      AND (t.state = ANY({unreported})
           OR t.updated_at < now() - make_interval(secs => (c.policy->>'device_timeout_s')::int))
    RETURNING 1
)
UPDATE ota_targets t SET state = {rolled_back}, failure = {boot}, reason = 'hello reports ' || d.firmware,
    finished_at = now(), updated_at = now()
FROM devices d, ota_campaigns c
WHERE d.device_id = t.device_id AND c.campaign_id = t.campaign_id AND c.status = ANY({live})
  AND t.state = {committed} AND d.firmware IS DISTINCT FROM t.target_version AND d.hello_at > t.finished_at
""",
    **_STATES,
)

# A target with no news for the campaign's device timeout: unreachable if its device is
# offline, offered again while attempts remain, failed after that. An unreachable device that
# said hello again is offered again.
TIMEOUTS: Final = statement(
    """
UPDATE ota_targets t SET
    state = CASE WHEN NOT d.online THEN {unreachable}
                 WHEN t.attempts < (c.policy->>'max_attempts')::int THEN {pending}
                 ELSE {failed} END,
    failure = CASE WHEN d.online AND t.attempts >= (c.policy->>'max_attempts')::int THEN NULL ELSE t.failure END,
    reason = CASE WHEN NOT d.online THEN 'offline' ELSE 'no report within the device timeout' END,
    finished_at = CASE WHEN NOT d.online OR t.attempts >= (c.policy->>'max_attempts')::int THEN now() END,
    updated_at = now()
FROM devices d, ota_campaigns c
WHERE d.device_id = t.device_id AND c.campaign_id = t.campaign_id AND c.status = ANY({live})
  AND t.state = ANY(%(in_progress)s)
  AND t.updated_at < now() - make_interval(secs => (c.policy->>'device_timeout_s')::int)
""",
    **_STATES,
)

RETRIES: Final = statement(
    """
UPDATE ota_targets t SET state = {pending}, updated_at = now(), finished_at = NULL,
    attempts = CASE WHEN t.state = {unreachable} THEN GREATEST(t.attempts - 1, 0) ELSE t.attempts END
FROM devices d, ota_campaigns c
WHERE d.device_id = t.device_id AND c.campaign_id = t.campaign_id AND c.status = ANY({live})
  AND ((t.state = {failed} AND t.failure = ANY(%(retried)s) AND t.attempts < (c.policy->>'max_attempts')::int)
       OR (t.state = {unreachable} AND d.online AND d.hello_at > t.updated_at))
""",
    **_STATES,
)

LANE_COUNTS: Final = statement(
    """
SELECT l.campaign_id, l.model, l.wave, c.policy,
    count(*) FILTER (WHERE t.wave <= l.wave) AS wave_targets,
    count(*) FILTER (WHERE t.wave <= l.wave AND t.state = ANY(%(ended)s)) AS wave_ended,
    count(*) FILTER (WHERE t.wave <= l.wave AND t.state = {committed}) AS wave_committed,
    count(*) FILTER (WHERE t.wave <= l.wave AND t.state = ANY({failures})) AS wave_failed,
    count(*) FILTER (WHERE t.state = ANY({finished})) AS ended,
    count(*) FILTER (WHERE t.state = ANY({failures}) AND t.failure = ANY(%(release)s)) AS release_failures,
    count(*) AS lane_targets
FROM ota_lanes l
JOIN ota_campaigns c ON c.campaign_id = l.campaign_id
JOIN ota_targets t ON t.campaign_id = l.campaign_id AND t.model = l.model
WHERE c.status = {running} AND l.status = {running}
GROUP BY l.campaign_id, l.model, l.wave, c.policy
""",
    **_STATES,
)

OFFER: Final = statement(
    """
UPDATE ota_targets t SET state = {offered}, attempts = t.attempts + 1, offered_at = now(), updated_at = now(),
    failure = NULL, reason = NULL
FROM ota_lanes l, ota_campaigns c, ota_releases r
WHERE l.campaign_id = t.campaign_id AND l.model = t.model AND c.campaign_id = t.campaign_id
  AND r.name = c.release_name AND r.version = c.version
  AND c.status = {running} AND l.status = {running} AND t.state = {pending} AND t.wave <= l.wave
RETURNING t.campaign_id, t.device_id, r.manifest, t.window_start, t.window_end, t.utc_offset_min, c.policy
""",
    **_STATES,
)

FINISH_CAMPAIGNS: Final = statement(
    """
UPDATE ota_campaigns c SET
    status = CASE WHEN s.paused = 0 THEN {completed} ELSE {paused} END,
    status_reason = CASE WHEN s.paused = 0 THEN NULL ELSE s.reasons END,
    updated_at = now()
FROM (
    SELECT l.campaign_id,
        count(*) FILTER (WHERE l.status = {paused}) AS paused,
        count(*) FILTER (WHERE l.status = {running}) AS running,
        string_agg(l.model || ': ' || l.status_reason, '; ') FILTER (WHERE l.status = {paused}) AS reasons
    FROM ota_lanes l GROUP BY l.campaign_id
) s
WHERE c.campaign_id = s.campaign_id AND c.status = {running} AND s.running = 0
  AND NOT EXISTS (SELECT 1 FROM ota_targets t WHERE t.campaign_id = c.campaign_id
                  AND NOT t.state = ANY({at_rest}))
""",
    **_STATES,
)
