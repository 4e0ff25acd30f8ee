"""Amounts read aloud: the table the merchants' ears know, and properties over all amounts."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.speech import DIGITS, announcement_text, read_amount, read_integer
from firmware_protocols.messages import AnnounceKind, Channel


@pytest.mark.parametrize(
    ("fen", "spoken"),
    [
        (0, "零元"),
        (1, "零点零一元"),
        (5, "零点零五元"),
        (10, "零点一元"),
        (1000, "十元"),
        (1250, "十二点五元"),
        (1500, "十五元"),
        (2000, "二十元"),
        (11000, "一百一十元"),
        (100500, "一千零五元"),
        (105930, "一千零五十九点三元"),
        (1001000, "一万零一十元"),
        (1000000, "一万元"),
        (10000000, "十万元"),
        (11000000, "十一万元"),
        (10010000, "十万零一百元"),
        (100000000, "一百万元"),
        (10000000000, "一亿元"),
        (10001000000, "一亿零一万元"),
        (12000000000, "一亿二千万元"),
        (99999999999, "九亿九千九百九十九万九千九百九十九点九九元"),
        (100000000000000, "一万亿元"),
        (5406, "五十四点零六元"),
        # fractions: 角 and 分, a trailing zero dropped, 零 kept before a lone 分
        (2, "零点零二元"),
        (20, "零点二元"),
        (50, "零点五元"),
        (99, "零点九九元"),
        (100, "一元"),
        (101, "一点零一元"),
        (110, "一点一元"),
        (990, "九点九元"),
        (1234, "十二点三四元"),
        (1001, "十点零一元"),
        (1010, "十点一元"),
        # tens: a leading 一十 is said 十, an inner one is not
        (1100, "十一元"),
        (1900, "十九元"),
        (2100, "二十一元"),
        (5000, "五十元"),
        (9900, "九十九元"),
        # hundreds and thousands, with zeros inside
        (10000, "一百元"),
        (10100, "一百零一元"),
        (10800, "一百零八元"),
        (12000, "一百二十元"),
        (10010, "一百点一元"),
        (50000, "五百元"),
        (99999, "九百九十九点九九元"),
        (100000, "一千元"),
        (100001, "一千点零一元"),
        (100050, "一千点五元"),
        (100100, "一千零一元"),
        (101000, "一千零一十元"),
        (110000, "一千一百元"),
        (123456, "一千二百三十四点五六元"),
        (500000, "五千元"),
        # 万: a lower part that does not fill the thousands takes one 零
        (1000001, "一万点零一元"),
        (1000100, "一万零一元"),
        (1010000, "一万零一百元"),
        (1100000, "一万一千元"),
        (2000000, "二万元"),
        (10000100, "十万零一元"),
        (100100000, "一百万一千元"),
        (100010000, "一百万零一百元"),
        (1000000000, "一千万元"),
        (9999999900, "九千九百九十九万九千九百九十九元"),
        # 亿 and above (the protocol's ceiling is 一百亿元)
        (10000010000, "一亿零一百元"),
        (11000000000, "一亿一千万元"),
        (12345678900, "一亿二千三百四十五万六千七百八十九元"),
        (100000000000, "十亿元"),
        (100000000100, "十亿零一元"),
        (101000000000, "十亿一千万元"),
        (110000000000, "十一亿元"),
        (200000000000, "二十亿元"),
        (1000000000000, "一百亿元"),
    ],
)
def test_amounts_read_as_merchants_hear_them(fen, spoken):
    assert read_amount(fen) == spoken


def test_channel_words_and_refund():
    assert announcement_text(Channel.WECHAT, AnnounceKind.PAYMENT, 1250) == "微信收款十二点五元"
    assert announcement_text(Channel.ALIPAY, AnnounceKind.PAYMENT, 5460) == "支付宝到账五十四点六元"
    assert announcement_text(Channel.UNIONPAY, AnnounceKind.PAYMENT, 100) == "云闪付收款一元"
    assert announcement_text(Channel.OTHER, AnnounceKind.PAYMENT, 100) == "收款成功一元"
    assert announcement_text(Channel.WECHAT, AnnounceKind.REFUND, 100) == "退款一元"


def test_negative_numbers_are_refused():
    with pytest.raises(ValueError, match="negative"):
        read_integer(-1)


_VALUES = {d: i for i, d in enumerate(DIGITS)}
_SMALL_UNITS = {"十": 10, "百": 100, "千": 1000}
_BIG_UNITS = {"万": 10**4, "亿": 10**8}


def _parse_integer(text: str) -> int:
    """An independent reader of Chinese numerals, to check `read_integer` against."""
    total, section, digit = 0, 0, 0
    for ch in text:
        if ch in _VALUES:
            digit = _VALUES[ch]
        elif ch in _SMALL_UNITS:
            section += (digit or 1) * _SMALL_UNITS[ch]
            digit = 0
        else:
            unit = _BIG_UNITS[ch]
            # 万亿: a 万 after 亿 scales everything read since the last 亿.
            if unit == 10**4 and total and total % 10**8 == 0 and section + digit == 0:
                total *= unit
            else:
                total = (total + section + digit) * unit if unit > 10**4 else total + (section + digit) * unit
            section, digit = 0, 0
    return total + section + digit


@given(st.integers(min_value=0, max_value=10**12 - 1))
def test_integer_reading_round_trips(n):
    assert _parse_integer(read_integer(n)) == n


@given(st.integers(min_value=0, max_value=10**12))
def test_reading_is_well_formed(fen):
    text = read_amount(fen)
    assert text.endswith("元")
    assert "零零" not in text
    assert not text.removesuffix("元").endswith("零") or fen == 0
    integer_part = text.removesuffix("元").split("点")[0]
    assert integer_part == "零" or not integer_part.startswith("零")


def test_amounts_above_the_protocol_ceiling_are_refused_before_anything_is_said():
    from firmware_protocols.errors import MessageError  # noqa: PLC0415
    from firmware_protocols.messages import MAX_AMOUNT_FEN, Announce, parse_payload  # noqa: PLC0415

    fields = {"device_id": "SPK1", "ts": 1, "payment_id": "P", "channel": "alipay", "paid_at": 1}
    fields |= {"issued_at": 1, "ttl_s": 60, "key_id": "k", "sig": "s"}
    assert read_amount(MAX_AMOUNT_FEN) == "一百亿元"
    with pytest.raises(MessageError, match="amount_fen: Input should be less than or equal to 1000000000000"):
        parse_payload(Announce, json.dumps({**fields, "amount_fen": MAX_AMOUNT_FEN + 1}).encode())
    with pytest.raises(ValueError, match="negative"):
        read_integer(-1)
