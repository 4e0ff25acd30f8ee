"""Amounts read aloud: the table the merchants' ears know, and properties over all amounts."""

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
