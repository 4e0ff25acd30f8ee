"""The HTTP app of a server process: the routers of the parts it runs, one error renderer,
liveness, and (with the fleet part) the pages.

    app = create_app(FLEET_ROUTERS + bridge_routers, pages=True, instance="haodian", parts=["fleet", "bridge"])

The parts' objects are registered on it afterwards (`http.services`), once they are started.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, FastAPI

from fleet_server.auth import routes as auth_routes
from fleet_server.contacts import routes as contacts_routes
from fleet_server.devices import routes as devices_routes
from fleet_server.figures import routes as figures_routes
from fleet_server.http import device_time, web
from fleet_server.http.errors import install_error_handlers
from fleet_server.identity import routes as identity_routes
from fleet_server.ingest import routes as ingest_routes
from fleet_server.inspection import routes as inspection_routes
from fleet_server.lifecycle import routes as lifecycle_routes
from fleet_server.notify import routes as notify_routes
from fleet_server.ota import routes as ota_routes
from fleet_server.quarantine import routes as quarantine_routes
from fleet_server.remote import routes as remote_routes

# Every process signs people in and tells devices the time; the other routers come with the fleet part.
AUTH_ROUTERS: tuple[APIRouter, ...] = (auth_routes.router, device_time.router)
FLEET_ROUTERS: tuple[APIRouter, ...] = (
    devices_routes.router,
    figures_routes.router,
    inspection_routes.router,
    inspection_routes.retire_router,
    devices_routes.registry_router,
    figures_routes.metrics_router,
    ota_routes.router,
    ota_routes.artifacts_router,
    remote_routes.router,
    identity_routes.router,
    contacts_routes.router,
    quarantine_routes.router,
    ingest_routes.router,
    notify_routes.router,
    lifecycle_routes.router,
)


def create_app(routers: Sequence[APIRouter], *, pages: bool, instance: str, parts: Sequence[str]) -> FastAPI:
    app = FastAPI(
        title="Haodian fleet API",
        version="0.1.0",
        summary="好店设备管理 — devices, payments and announcement delivery",
        docs_url=None,  # Swagger UI loads assets from a CDN; the spec is at /openapi.json.
        redoc_url=None,
    )
    install_error_handlers(app)
    for router in routers:
        app.include_router(router)

    @app.get("/healthz", tags=["ops"], summary="Liveness")
    async def healthz() -> dict[str, object]:
        return {"status": "ok", "parts": sorted(parts), "instance": instance}

    if pages:
        web.mount(app)
    return app
