"""One error shape for every HTTP API of the server: a code, and the message in zh-CN and English.

    {"error": {"code": "DEVICE_NOT_FOUND", "message": "device X not found", "message_zh": "设备 X 不存在"}}

One handler renders every `FleetError` with the status its class declares (`fleet_server.errors`),
so routes call their stores and never translate errors themselves. Request validation errors
and values PostgreSQL refuses are rendered in the same shape.
"""

from __future__ import annotations

from typing import Any

import psycopg
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from firmware_protocols.messages import describe_errors
from fleet_server.errors import FleetError

log = structlog.get_logger(__name__)


class ErrorBody(BaseModel):
    code: str
    message: str
    message_zh: str


class ErrorResponse(BaseModel):
    error: ErrorBody


def error_response(status: int, code: str, message: str, message_zh: str) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(code=code, message=message, message_zh=message_zh))
    return JSONResponse(status_code=status, content=body.model_dump())


def install_error_handlers(app: FastAPI) -> None:
    async def on_fleet_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, FleetError)  # noqa: S101 - registered for FleetError only.
        return error_response(exc.status, exc.code, str(exc), exc.message_zh)

    async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)  # noqa: S101 - registered for it only.
        problems = describe_errors(exc.errors())
        return error_response(422, "INVALID_REQUEST", problems, f"请求无效：{problems}")

    async def on_data_error(request: Request, exc: Exception) -> JSONResponse:
        # A value PostgreSQL cannot hold (a NUL character in text, a number out of range) that
        # the request models let through: the request's fault, not a server error (found by the
        # OpenAPI fuzzing, issue 10).
        log.warning("request value refused by the database", path=request.url.path, error=str(exc)[:200])
        return error_response(400, "INVALID_VALUE", f"a value cannot be stored: {exc}", "请求中含有无法处理的值")

    app.add_exception_handler(FleetError, on_fleet_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(psycopg.DataError, on_data_error)


NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse}}
