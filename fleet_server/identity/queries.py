"""The SQL of device credentials: only generations and dates, never a secret."""

from __future__ import annotations

from typing import Final

_STATUS_COLUMNS: Final = "device_id, generation, issued_at, issued_by, revoked_at, revoked_by"

# A device's credentials, locked for provisioning: (generation, revoked_at).
LOCK_CREDENTIALS: Final = "SELECT generation, revoked_at FROM device_credentials WHERE device_id = %s FOR UPDATE"
# A new generation issued (un-revoking, and forgetting a certificate of the old one).
ISSUE: Final = (
    "INSERT INTO device_credentials (device_id, generation, issued_by) VALUES (%s, %s, %s)"
    " ON CONFLICT (device_id) DO UPDATE SET generation = EXCLUDED.generation, issued_at = now(),"
    " issued_by = EXCLUDED.issued_by, revoked_at = NULL, revoked_by = NULL, cert_serial = NULL,"
    " signs_reports_at = NULL"
)
# Generation 1 for each of the devices that has none: (device_ids, by).
ISSUE_MISSING: Final = (
    "INSERT INTO device_credentials (device_id, generation, issued_by)"
    " SELECT unnest(%s::text[]), 1, %s ON CONFLICT (device_id) DO NOTHING"
)
# The generations of the given devices: (device_id, generation).
GENERATIONS: Final = "SELECT device_id, generation FROM device_credentials WHERE device_id = ANY(%s)"
# Revoked (the first revocation's time and author are kept). Rows: CredentialStatus.
REVOKE: Final = (
    "UPDATE device_credentials SET revoked_at = COALESCE(revoked_at, now()),"  # noqa: S608 - constant columns.
    f" revoked_by = COALESCE(revoked_by, %s) WHERE device_id = %s RETURNING {_STATUS_COLUMNS}"
)
# One device's credentials. Rows: CredentialStatus.
STATUS: Final = f"SELECT {_STATUS_COLUMNS} FROM device_credentials WHERE device_id = %s"  # noqa: S608 - constant columns.
# The generation a connect must prove: (generation), none if never provisioned or revoked.
CURRENT_GENERATION: Final = "SELECT generation FROM device_credentials WHERE device_id = %s AND revoked_at IS NULL"
# A client certificate's serial kept with the device's credentials: (serial, device_id).
RECORD_CERTIFICATE: Final = "UPDATE device_credentials SET cert_serial = %s WHERE device_id = %s"
# The CRL's content: serials of revoked devices' certificates.
REVOKED_SERIALS: Final = (
    "SELECT cert_serial FROM device_credentials WHERE revoked_at IS NOT NULL AND cert_serial IS NOT NULL"
)

# What a report's signature is checked against: (generation, signs_reports_at) of one device.
REPORT_TRUST: Final = "SELECT generation, signs_reports_at FROM device_credentials WHERE device_id = %s"
# The device signs from now on (its first verified report at this generation): (device_id, generation).
SIGNS_REPORTS: Final = (
    "UPDATE device_credentials SET signs_reports_at = now()"
    " WHERE device_id = %s AND generation = %s AND signs_reports_at IS NULL"
)
# A connect refused because the device's genuine password was signed too far from our clock:
# (device_id, skew_s); the fleet API shows it beside the device's own clock reports.
RECORD_CLOCK_REFUSAL: Final = (
    "INSERT INTO device_clocks (device_id, refused_skew_s, refused_at) VALUES (%s, %s, now())"
    " ON CONFLICT (device_id) DO UPDATE SET refused_skew_s = EXCLUDED.refused_skew_s, refused_at = now()"
)
