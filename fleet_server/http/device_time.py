"""The server's clock, signed, for devices that cannot trust their own (`TimeReference`).

    GET /api/v1/time?device_id=SPK0001&nonce=<16-64 url-safe characters>

No sign-in: a device whose clock is wrong cannot connect to the broker, and asks here first.
The answer is signed with the key devices trust for announces and carries the device's own
nonce, so it proves its freshness to that one device; it tells no one anything secret. Every
server process answers it (each holds the signing key).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from firmware_protocols.messages import TimeReference
from firmware_protocols.signing import Signer
from firmware_protocols.topics import DEVICE_ID_PATTERN
from fleet_server.http.services import provide

router = APIRouter(prefix="/api/v1", tags=["devices"])


@dataclass(frozen=True, slots=True)
class TimeService:
    signer: Signer
    max_skew_s: int  # what the broker allows a device's password

    def reference(self, device_id: str, nonce: str) -> TimeReference:
        now = time.time_ns() // 1_000_000
        unsigned = TimeReference(
            device_id=device_id, ts=now, nonce=nonce, max_skew_s=self.max_skew_s, key_id=self.signer.key_id
        )
        return self.signer.sign(unsigned)


TimeServiceDep = Annotated[TimeService, Depends(provide(TimeService))]


@router.get(
    "/time",
    summary="The server's time, signed for one device and its nonce (no sign-in)",
    response_class=Response,
    responses={200: {"content": {"application/json": {}}, "description": "a signed TimeReference"}},
)
async def server_time(
    service: TimeServiceDep,
    device_id: Annotated[str, Query(pattern=DEVICE_ID_PATTERN.pattern)],
    nonce: Annotated[str, Query(pattern=r"^[A-Za-z0-9_-]{16,64}$")],
) -> Response:
    return Response(
        service.reference(device_id, nonce).to_json(),
        media_type="application/json",
        headers={"cache-control": "no-store"},
    )
