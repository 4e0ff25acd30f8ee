"""`haodian tls ...` and `haodian broker-config`: certificates for development and tests, and the
Mosquitto configuration that enforces the fleet's access rules in production.

    haodian tls dev-ca --out certs/ --host broker.local --host 127.0.0.1
        a CA, a server certificate for those names, for the embedded broker's TLS listener and
        HTTPS (HAODIAN_MQTT_TLS_CERT_FILE, HAODIAN_HTTP_TLS_CERT_FILE ...); development only
    haodian tls device SPK-0001 --ca certs/ --out certs/devices/
        a device's client certificate (mutual TLS; its common name is the device id)
    haodian broker-config --out /etc/mosquitto/haodian --ca certs/ --cert ... --key ...
        acl, passwd (server account), crl.pem (revoked devices, read from the database) and the
        listener lines to include in mosquitto.conf
"""

from __future__ import annotations

import argparse
import secrets
from pathlib import Path
from typing import Any

from fleet_server.identity.access import device_identity_refusal
from fleet_server.identity.certs import CertificateAuthority, write_private
from fleet_server.identity.mosquitto import MosquittoTls, write_config


def add_parser(sub: Any) -> None:
    tls = sub.add_parser("tls", help="make a development CA and certificates (TLS for MQTT and HTTPS)")
    tls.set_defaults(run=run_tls)
    action = tls.add_subparsers(dest="tls_command", required=True, metavar="ACTION")
    ca = action.add_parser("dev-ca", help="a CA and a server certificate, for development and tests only")
    ca.add_argument("--out", type=Path, required=True, help="folder for ca.pem, ca.key, server.pem, server.key")
    ca.add_argument("--host", action="append", default=[], help="a name or address the server is reached at")
    device = action.add_parser(
        "device",
        help="a device's client certificate signed by the CA in --ca (the device must be provisioned;"
        " its serial is recorded, so revoking the device revokes it)",
    )
    device.add_argument("device_id")
    device.add_argument("--ca", type=Path, required=True, help="folder with ca.pem and ca.key")
    device.add_argument("--out", type=Path, required=True, help="folder for <device>.pem and <device>.key")

    broker = sub.add_parser(
        "broker-config", help="write the Mosquitto ACL, password file, CRL and listeners for the fleet"
    )
    broker.set_defaults(run=run_broker_config)
    broker.add_argument("--out", type=Path, required=True, help="folder to write into")
    broker.add_argument("--ca", type=Path, required=True, help="folder with ca.pem and ca.key (signs the CRL)")
    broker.add_argument("--cert", type=Path, required=True, help="the broker's certificate (PEM)")
    broker.add_argument("--key", type=Path, required=True, help="the broker's private key (PEM)")
    broker.add_argument("--server-account", default="haodian-server", help="the servers' MQTT username")
    broker.add_argument("--device-port", type=int, default=8883)
    broker.add_argument("--server-port", type=int, default=8884)


async def run_tls(args: argparse.Namespace) -> int:
    if args.tls_command == "dev-ca":
        ca = CertificateAuthority.create("Haodian development CA")
        ca.write(args.out)
        hosts = args.host or ["localhost", "127.0.0.1"]
        ca.issue_server(hosts[0], hosts).write(args.out / "server.pem", args.out / "server.key")
        print(f"CA and server certificate for {', '.join(hosts)} in {args.out} (development only)")
        return 0
    from haodian.server import SERVER_ACCOUNT  # noqa: PLC0415
    from haodian.settings import Settings  # noqa: PLC0415

    settings = Settings()
    refusal = device_identity_refusal(
        args.device_id, server_accounts={SERVER_ACCOUNT}, client_prefix=settings.mqtt_client_prefix
    )
    if refusal is not None:
        raise SystemExit(f"haodian tls device: refused: {refusal}")
    if not settings.database_url:
        raise SystemExit(
            "haodian tls device: set HAODIAN_DATABASE_URL: every certificate is recorded with its device,"
            " so that revoking the device revokes it"
        )
    ca = _load_ca(args.ca)
    issued = ca.issue_device(args.device_id)
    if not await _record_serial(settings.database_url, args.device_id, issued.serial):
        raise SystemExit(
            f"haodian tls device: {args.device_id} is not provisioned (haodian fleet provision {args.device_id});"
            " no certificate issued"
        )
    issued.write(args.out / f"{args.device_id}.pem", args.out / f"{args.device_id}.key")
    print(f"{args.device_id}: certificate serial {issued.serial} in {args.out} (recorded)")
    return 0


async def _record_serial(database_url: str, device_id: str, serial: int) -> bool:
    """Keep the serial with the device's credentials, so revoking the device puts this
    certificate on the CRL that `broker-config` writes; False if the device is not provisioned."""
    from fleet_server.db.migrate import migrate  # noqa: PLC0415
    from fleet_server.db.pool import open_pool  # noqa: PLC0415
    from fleet_server.identity.store import record_certificate  # noqa: PLC0415

    async with open_pool(database_url, max_size=1) as pool:
        await migrate(pool)
        return await record_certificate(pool, device_id, serial)


def _load_ca(folder: Path) -> CertificateAuthority:
    try:
        return CertificateAuthority.load(folder / "ca.pem", folder / "ca.key")
    except (OSError, ValueError, TypeError) as exc:
        raise SystemExit(f"haodian: cannot read the CA in {folder} (ca.pem, ca.key): {exc}") from None


async def run_broker_config(args: argparse.Namespace) -> int:
    from fleet_server.db.migrate import migrate  # noqa: PLC0415
    from fleet_server.db.pool import open_pool  # noqa: PLC0415
    from fleet_server.identity.store import revoked_certificate_serials  # noqa: PLC0415
    from haodian.settings import Settings  # noqa: PLC0415

    settings = Settings()
    if not settings.database_url:
        raise SystemExit("haodian broker-config: set HAODIAN_DATABASE_URL (the revoked devices are read from it)")
    ca = _load_ca(args.ca)
    async with open_pool(settings.database_url, max_size=1) as pool:
        await migrate(pool)
        revoked = await revoked_certificate_serials(pool)
    args.out.mkdir(parents=True, exist_ok=True)
    crl = args.out / "crl.pem"
    crl.write_bytes(ca.crl(revoked))
    password_file = args.out / "server-password"
    if password_file.exists():
        password = password_file.read_text(encoding="utf-8").strip()
    else:
        password = secrets.token_urlsafe(32)
        write_private(password_file, password.encode() + b"\n")
    lines = write_config(
        args.out,
        MosquittoTls(args.ca / "ca.pem", args.cert, args.key, crl),
        {args.server_account: password},
        device_port=args.device_port,
        server_port=args.server_port,
    )
    (args.out / "listeners.conf").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(
        f"wrote {args.out}/listeners.conf (include it in mosquitto.conf), acl, passwd, crl.pem"
        f" ({len(revoked)} revoked), server-password; send Mosquitto SIGHUP or restart it to apply"
    )
    return 0
