"""`haodian pay` (one signed test notification to a bridge) and `haodian keys` (the development
keys, and the server public key agents are given)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    pay = sub.add_parser(
        "pay",
        help="send one signed test payment notification to a bridge",
        description="Send one payment notification signed with the development backend key.",
    )
    pay.add_argument("--bridge-url", default="http://127.0.0.1:8000", help="bridge base URL")
    pay.add_argument("--merchant", required=True, help="merchant id")
    pay.add_argument("--amount", required=True, help="amount in yuan, e.g. 12.50")
    pay.add_argument("--channel", default="wechat", choices=["alipay", "wechat", "unionpay", "other"])
    pay.add_argument("--data-dir", type=Path, default=Path(".haodian"), help="where the development keys are")
    pay.set_defaults(run=run_pay)

    keys = sub.add_parser(
        "keys",
        help="create development keys if missing and show the server public key",
        description="Create the development keys in the data folder if missing and print "
        "the server's announce-signing public key (give it to agents with --server-key).",
    )
    keys.add_argument("--data-dir", type=Path, default=Path(".haodian"))
    keys.set_defaults(run=run_keys)


def _amount_fen(text: str) -> int:
    from decimal import Decimal, InvalidOperation  # noqa: PLC0415

    try:
        value = Decimal(text)
    except InvalidOperation:
        raise SystemExit(f"haodian pay: amount {text!r} is not a number (e.g. 12.50)") from None
    if value <= 0 or value != value.quantize(Decimal("0.01")):
        raise SystemExit(f"haodian pay: amount {text!r} must be positive with at most 2 decimals")
    return int(value * 100)


async def run_pay(args: argparse.Namespace) -> int:
    import httpx  # noqa: PLC0415

    from firmware_protocols.messages import Channel  # noqa: PLC0415
    from haodian.keys import dev_key_paths, read_rsa_private_key  # noqa: PLC0415
    from simulators.backend import PaymentBackend  # noqa: PLC0415

    amount_fen = _amount_fen(args.amount)
    backend = PaymentBackend(read_rsa_private_key(dev_key_paths(args.data_dir)[1]), args.bridge_url, [args.merchant])
    body, headers = backend.notification(amount_fen=amount_fen, channel=Channel(args.channel))
    async with httpx.AsyncClient(timeout=10) as client:
        try:
            response = await backend.send(client, body, headers)
        except httpx.HTTPError as exc:
            print(f"cannot reach the bridge at {args.bridge_url}: {exc}", file=sys.stderr)
            return 2
    print(response.status_code, response.text)
    return 0 if response.is_success else 1


async def run_keys(args: argparse.Namespace) -> int:
    from firmware_protocols.signing import encode_public_key  # noqa: PLC0415
    from haodian.keys import dev_key_paths, ensure_dev_keys, read_signing_key  # noqa: PLC0415

    ensure_dev_keys(args.data_dir)
    signing, backend_private, backend_public = dev_key_paths(args.data_dir)
    print(
        f"server announce-signing public key (--server-key): "
        f"{encode_public_key(read_signing_key(signing).public_key())}"
    )
    print(f"development backend keys: {backend_private} (private), {backend_public} (public)")
    return 0
