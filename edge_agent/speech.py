"""What the merchant hears: an amount in fen read aloud in Mandarin, with the channel's words.

    1059.30 元 → 一千零五十九点三元      0.05 → 零点零五元      10 → 十元
    10010 → 一万零一十元                100000000 → 一亿元

The integer part follows the usual reading: groups of four digits joined by 万 and 亿 (and 万亿
beyond), one 零 for any run of zeros inside the number, and a leading 一十 said as 十. The
fraction keeps 角 and 分 digits and drops a trailing zero; a whole amount has no 点.
"""

from __future__ import annotations

from firmware_protocols.messages import AlertCode, Announce, AnnounceKind, Channel

DIGITS = "零一二三四五六七八九"
_PLACES = ("千", "百", "十", "")
_GROUPS = ((10**8, "亿"), (10**4, "万"))

CHANNEL_WORDS: dict[Channel, str] = {
    Channel.ALIPAY: "支付宝到账",
    Channel.WECHAT: "微信收款",
    Channel.UNIONPAY: "云闪付收款",
    Channel.OTHER: "收款成功",
}
REFUND_WORDS = "退款"
ALERT_WORDS: dict[AlertCode, str] = {
    AlertCode.TEST: "测试播报，收款成功",
    AlertCode.BOUND: "设备绑定成功",
    AlertCode.UNBOUND: "设备已解绑",
}
# Said between the repeats of one announcement.
REPEAT_PAUSE = "，"


def _read_group(n: int) -> str:
    """Read 1..9999 with inner zeros as one 零 and no trailing zeros."""
    out: list[str] = []
    pending_zero = False
    for place, digit in zip(_PLACES, f"{n:04d}", strict=True):
        d = int(digit)
        if d == 0:
            pending_zero = bool(out)
            continue
        if pending_zero:
            out.append("零")
            pending_zero = False
        out.append(DIGITS[d] + place)
    return "".join(out)


def _read_positive(n: int) -> str:
    for group_value, group_word in _GROUPS:
        if n >= group_value:
            high, low = divmod(n, group_value)
            text = _read_positive(high) + group_word
            if low:
                # A lower part that does not fill its top place needs a 零: 一万零五, 一亿零一万.
                text += ("零" if low < group_value // 10 else "") + _read_positive(low)
            return text
    return _read_group(n)


def read_integer(n: int) -> str:
    """Read a non-negative integer: 0 → 零, 15 → 十五, 110 → 一百一十, 10010 → 一万零一十."""
    if n < 0:
        raise ValueError(f"cannot read a negative number: {n}")
    if n == 0:
        return "零"
    text = _read_positive(n)
    return text[1:] if text.startswith("一十") else text


def read_amount(amount_fen: int) -> str:
    """Read an amount given in fen: 105930 → 一千零五十九点三元, 5 → 零点零五元."""
    yuan, fen = divmod(amount_fen, 100)
    text = read_integer(yuan)
    jiao, fen_digit = divmod(fen, 10)
    if fen_digit:
        text += "点" + DIGITS[jiao] + DIGITS[fen_digit]
    elif jiao:
        text += "点" + DIGITS[jiao]
    return text + "元"


def announcement_text(channel: Channel, kind: AnnounceKind, amount_fen: int) -> str:
    """The whole sentence: 微信收款十二点五元, or 退款十二点五元 for a refund."""
    words = REFUND_WORDS if kind == AnnounceKind.REFUND else CHANNEL_WORDS[channel]
    return words + read_amount(amount_fen)


def spoken_text(announce: Announce) -> str:
    """What the speaker says for `announce`: a payment or refund with its amount, or an alert's phrase."""
    if announce.alert is not None:
        return ALERT_WORDS[announce.alert]
    return announcement_text(announce.channel, announce.kind, announce.amount_fen)


def repeated(text: str, times: int) -> str:
    """`text` said `times` times with a pause between (merchants in noisy shops ask for 2 or 3)."""
    return REPEAT_PAUSE.join([text] * times)
