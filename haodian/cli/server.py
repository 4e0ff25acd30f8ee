"""`haodian server` (the fleet server and/or payment bridge, one process or several workers)
and `haodian broker` (the embedded MQTT broker on its own)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from typing import Any

from haodian.cli.kit import positive_int, tcp_port


def add_parser(sub: Any) -> None:
    server = sub.add_parser(
        "server",
        help="run the fleet server and/or payment bridge (HTTP API + MQTT)",
        description="Run the fleet server and payment bridge. Configured by HAODIAN_* "
        "environment variables (see README); without HAODIAN_MQTT_URL / "
        "HAODIAN_DATABASE_URL it starts the embedded broker / database.",
    )
    server.add_argument(
        "--parts",
        default="fleet,bridge",
        help="comma-separated: fleet (API, pages, inspector, OTA, ingest), bridge, ingest (an extra ingest);"
        " default fleet,bridge in one process",
    )
    server.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="processes of the given stateless parts (bridge, ingest) sharing the port and the device"
        " streams; needs HAODIAN_MQTT_URL and HAODIAN_DATABASE_URL (default 1)",
    )
    server.add_argument("--host", default=None, help="HTTP bind address (default HAODIAN_HTTP_HOST or 127.0.0.1)")
    server.add_argument("--port", type=tcp_port, default=None, help="HTTP port (default HAODIAN_HTTP_PORT or 8000)")
    server.set_defaults(run=run_server)

    broker = sub.add_parser(
        "broker",
        help="run the embedded MQTT broker (amqtt) on its own",
        description="Run the embedded amqtt broker, MQTT 3.1.1, until interrupted.",
    )
    broker.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    broker.add_argument("--port", type=tcp_port, default=1883, help="port (default 1883)")
    broker.set_defaults(run=run_broker)


async def run_server(args: argparse.Namespace) -> int:
    from firmware_protocols.endpoint import BrokerEndpoint  # noqa: PLC0415
    from haodian.embedded import EmbeddedDatabase  # noqa: PLC0415
    from haodian.keys import load_server_keys  # noqa: PLC0415
    from haodian.server import Part, ServerStack, start_embedded_broker  # noqa: PLC0415
    from haodian.settings import Settings  # noqa: PLC0415

    try:
        parts = {Part(p.strip()) for p in args.parts.split(",") if p.strip()}
    except ValueError:
        raise SystemExit(f"haodian server: --parts takes fleet, bridge and/or ingest, not {args.parts!r}") from None
    if not parts:
        raise SystemExit("haodian server: --parts names no part")
    if args.workers > 1:
        return await _run_workers(args, {p.value for p in parts})
    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides["http_host"] = args.host
    if args.port is not None:
        overrides["http_port"] = args.port
    settings = Settings(**overrides)
    keys = load_server_keys(settings)
    async with contextlib.AsyncExitStack() as stack:
        if settings.database_url:
            database_url = settings.database_url
        else:
            database_url = (await stack.enter_async_context(EmbeddedDatabase(settings.data_dir / "pg"))).url
        if settings.mqtt_url:
            endpoint = BrokerEndpoint.from_url(settings.mqtt_url)
        else:
            broker, endpoint = await start_embedded_broker(stack, settings, database_url=database_url, keys=keys)
            if broker.tls_endpoint is not None:
                print(f"embedded MQTT broker: TLS on {broker.tls_endpoint.url()}", flush=True)
        server = await stack.enter_async_context(
            ServerStack(settings, parts=parts, endpoint=endpoint, database_url=database_url, keys=keys)
        )
        print(f"haodian server ({', '.join(sorted(parts))}) on {server.base_url}; broker {endpoint.url()}", flush=True)
        await asyncio.Event().wait()
    return 0


async def _run_workers(args: argparse.Namespace, parts: set[str]) -> int:
    from haodian import workers  # noqa: PLC0415
    from haodian.settings import Settings  # noqa: PLC0415

    settings = Settings()
    env = dict(os.environ)
    try:
        port, environments = workers.worker_plan(
            parts=parts, workers=args.workers, port=args.port if args.port is not None else settings.http_port, env=env
        )
    except workers.WorkersError as exc:
        raise SystemExit(f"haodian server: {exc}") from None
    host = args.host or settings.http_host
    command = [
        sys.executable,
        "-m",
        "haodian",
        "--log-level",
        args.log_level,
        "server",
        "--parts",
        ",".join(sorted(parts)),
        "--host",
        host,
        "--port",
        str(port),
    ]
    print(f"haodian server ({', '.join(sorted(parts))}) x {args.workers} workers on http://{host}:{port}", flush=True)
    try:
        return await workers.supervise(command, environments)
    except workers.WorkersError as exc:
        raise SystemExit(f"haodian server: {exc}") from None


async def run_broker(args: argparse.Namespace) -> int:
    from haodian.embedded import EmbeddedBroker  # noqa: PLC0415

    async with EmbeddedBroker(args.host, args.port) as broker:
        print(f"embedded MQTT broker (amqtt) on {broker.endpoint.url()}", flush=True)
        await asyncio.Event().wait()
    return 0
