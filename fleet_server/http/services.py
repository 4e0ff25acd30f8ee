"""Typed service dependencies: each part's objects are registered once, by type, on the app
when the server starts (`haodian.server.ServerStack`), and a route asks for them by type.

    RegistryDep = Annotated[DeviceRegistry, Depends(provide(DeviceRegistry))]

    @router.get("/devices")
    async def list_devices(registry: RegistryDep) -> ...

A service of a part this process does not run (the bridge's store on a fleet-only server) is a
503 naming it, not an AttributeError. The HTTP settings the routes need travel the same way
(`HttpPolicy`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Request

from fleet_server.errors import ApiError
from fleet_server.http.ratelimit import RateLimiter

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class HttpPolicy:
    """How the HTTP layer treats callers: cookies over HTTPS only, sign-in and notification rates."""

    cookie_secure: bool = False
    login_limiter: RateLimiter | None = None
    notify_limiter: RateLimiter | None = None


class Services:
    def __init__(self) -> None:
        self._by_type: dict[type[Any], object] = {}

    def add(self, service: object) -> None:
        """Register `service` under its own type (one of each type)."""
        kind = type(service)
        if kind in self._by_type:
            raise ValueError(f"a {kind.__name__} is registered already")
        self._by_type[kind] = service

    def find(self, kind: type[T]) -> T | None:
        service = self._by_type.get(kind)
        return service if isinstance(service, kind) else None

    def get(self, kind: type[T]) -> T:
        service = self.find(kind)
        if service is None:
            raise ApiError(
                503,
                "PART_NOT_RUNNING",
                f"this server process does not run the part that serves this ({kind.__name__})",
                "本服务进程未运行该功能",
            )
        return service


def services_of(app: FastAPI) -> Services:
    """The app's services (made on first use)."""
    services: Services | None = getattr(app.state, "services", None)
    if services is None:
        services = app.state.services = Services()
    return services


def provide(kind: type[T]) -> Callable[[Request], Awaitable[T]]:
    """A dependency giving the registered `kind`; 503 if this process has none."""

    # A coroutine, not a function: FastAPI runs a plain function dependency on its thread pool,
    # a thread hop on every request for a dictionary lookup.
    async def dependency(request: Request) -> T:
        return services_of(request.app).get(kind)

    dependency.__name__ = f"provide_{kind.__name__}"
    return dependency


def provide_optional(kind: type[T]) -> Callable[[Request], Awaitable[T | None]]:
    """A dependency giving the registered `kind`, or None."""

    async def dependency(request: Request) -> T | None:
        return services_of(request.app).find(kind)

    dependency.__name__ = f"provide_optional_{kind.__name__}"
    return dependency


HttpPolicyDep = Annotated[HttpPolicy, Depends(provide(HttpPolicy))]
