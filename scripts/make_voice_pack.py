"""Build the Mandarin voice pack the edge agent plays announcements from.

Each clip is one token of an announcement (a digit, a unit, a channel phrase) spoken by
espeak-ng's Mandarin voice, trimmed of silence by sox and stored as 16 kHz mono 16-bit WAV,
the format the cheap codecs on payment speakers play directly. The clips and the manifest are
committed; run this again to add tokens (existing clips are kept) or, with --force, to change
the voice:

    apt-get install espeak-ng sox
    python scripts/make_voice_pack.py [--out edge_agent/voices/zh_cn] [--force]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Token text → file stem. Every character an amount reading can produce, plus the phrases.
TOKENS: dict[str, str] = {
    **{d: f"digit_{i}" for i, d in enumerate("零一二三四五六七八九")},
    "十": "unit_shi",
    "百": "unit_bai",
    "千": "unit_qian",
    "万": "unit_wan",
    "亿": "unit_yi",
    "点": "point",
    "元": "yuan",
    "支付宝到账": "alipay_received",
    "微信收款": "wechat_received",
    "云闪付收款": "unionpay_received",
    "收款成功": "payment_received",
    "退款": "refund",
    # Alerts (AlertCode): fixed phrases, never free text.
    "测试播报": "test_announcement",
    "设备绑定成功": "device_bound",
    "设备已解绑": "device_unbound",
    # A comma is a short pause: between a repeated announcement, and inside a phrase.
    "，": "pause",
}

PAUSE_S = "0.25"

SAMPLE_RATE = 16000


def build(out: Path, *, force: bool = False) -> None:
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            sys.exit(f"make_voice_pack: {tool} is not installed (apt-get install espeak-ng sox)")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for text, stem in TOKENS.items():
            clip = out / f"{stem}.wav"
            if clip.exists() and not force:
                continue
            if text == "，":
                rate = ["-r", str(SAMPLE_RATE), "-c", "1", "-b", "16"]
                subprocess.run(["sox", "-n", *rate, str(clip), "trim", "0", PAUSE_S], check=True)
                print(f"{stem}.wav  (pause {PAUSE_S} s)")
                continue
            raw = Path(tmp) / f"{stem}.raw.wav"
            subprocess.run(["espeak-ng", "-v", "cmn", "-s", "190", "-w", str(raw), text], check=True)
            # Trim leading and trailing silence so clips join without gaps.
            subprocess.run(
                [
                    "sox",
                    str(raw),
                    "-r",
                    str(SAMPLE_RATE),
                    "-c",
                    "1",
                    "-b",
                    "16",
                    str(out / f"{stem}.wav"),
                    "silence",
                    "1",
                    "0.02",
                    "1%",
                    "reverse",
                    "silence",
                    "1",
                    "0.02",
                    "1%",
                    "reverse",
                ],
                check=True,
            )
            print(f"{stem}.wav  {text}")
    manifest = {
        "language": "zh-CN",
        "sample_rate": SAMPLE_RATE,
        "voice": "espeak-ng cmn",
        "clips": {text: f"{stem}.wav" for text, stem in TOKENS.items()},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent.parent / "edge_agent/voices/zh_cn")
    parser.add_argument("--force", action="store_true", help="rebuild every clip, not only missing ones")
    args = parser.parse_args()
    build(args.out, force=args.force)


if __name__ == "__main__":
    main()
