"""AT commands of the device's 4G modem (Quectel EC200/EC25/EG25 style), sans-IO.

Longer than 400 lines because it is one codec: the command builder, the parser of responses,
final result codes and URCs, and the value parsers of each command share the dialect's grammar,
and the language-neutral vectors (vectors/at.json) test it as one.

    parser = AtParser()
    line.write(parser.expect(build("+CSQ")))          # b"AT+CSQ\\r", and the parser waits for it
    parser.feed(line.read())
    for event in parser:                              # AtResponse or Urc, in stream order
        ...
    signal = parse_csq(response)                     # values raise CodecError too

Lines end in CR and/or LF; empty lines are ignored. While a command is pending, a line that
starts with the command's own prefix (`+CSQ:`) or that is not a known unsolicited result code is
part of its response, up to the final result code (OK, ERROR, +CME ERROR: n, +CMS ERROR: n, ...).
Unsolicited result codes (RDY, +CPIN:, +CREG:, +QIND:, ...) may come at any point, before, inside
or after a response. The command echo (ATE1) is recognised and dropped.

Parsed values follow 3GPP TS 27.007 and Quectel's AT manuals: `+CSQ` (RSSI in dBm and 0-5
bars), `+CREG`/`+CEREG` (status, LAC/TAC, cell id, access technology), `+QCCID`/`+CCID` (SIM
ICCID), `+QENG="servingcell"` (RAT, MCC/MNC, cell, RSRP/RSRQ/SINR), `ATI`/`+CGSN` (identity),
and the network's time: `+CCLK?` (TS 27.007 §8.15), Quectel's `+QLTS=2` and the NITZ URC
`+CTZE:` (§8.41, after `AT+CTZR=2`).
"""

from __future__ import annotations

import datetime
import enum
import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Concatenate, ParamSpec, TypeVar

from firmware_protocols.errors import CodecError, ProtocolError
from firmware_protocols.serial._stream import ByteStream

# Longer than any response line we expect (+QENG is ~120 characters); a line without an end is
# line noise, not a response to wait for.
MAX_LINE = 512

FINAL_OK = frozenset({"OK"})
FINAL_ERRORS = frozenset({"ERROR", "NO CARRIER", "NO DIALTONE", "BUSY", "NO ANSWER"})
URC_PREFIXES = (
    "RDY",
    "RING",
    "POWERED DOWN",
    "+CPIN:",
    "+CREG:",
    "+CGREG:",
    "+CEREG:",
    "+CFUN:",
    "+QIND:",
    "+QUSIM:",
    "+QIURC:",
    "+QSTAT:",
    "+CMTI:",
    "+QNTP:",
    "+CTZE:",
    "+CTZV:",
    "NO CARRIER",
)
_COMMAND = re.compile(r"^(?:[+&][A-Z][A-Z0-9]*|[A-Z]\d*)$")


def build(command: str, *args: str | int, query: bool = False, test: bool = False) -> bytes:
    """`build("+CSQ")` → `AT+CSQ\\r`; `build("+QENG", "servingcell")` → `AT+QENG="servingcell"\\r`.

    Strings are quoted, integers are not; `query` adds `?`, `test` adds `=?`.
    """
    if not _COMMAND.match(command):
        raise ValueError(f"not an AT command name: {command!r}")
    if sum((bool(args), query, test)) > 1:
        raise ValueError("arguments, query and test are exclusive")
    text = "AT" + command
    if query:
        text += "?"
    elif test:
        text += "=?"
    elif args:
        parts = []
        for arg in args:
            if isinstance(arg, int):
                parts.append(str(arg))
            elif '"' in arg or not arg.isprintable() or not arg.isascii():
                raise ValueError(f"AT string argument must be printable ASCII without quotes: {arg!r}")
            else:
                parts.append(f'"{arg}"')
        text += "=" + ",".join(parts)
    return text.encode("ascii") + b"\r"


class Final(enum.StrEnum):
    OK = "OK"
    ERROR = "ERROR"
    CME_ERROR = "+CME ERROR"
    CMS_ERROR = "+CMS ERROR"
    NO_CARRIER = "NO CARRIER"
    NO_DIALTONE = "NO DIALTONE"
    BUSY = "BUSY"
    NO_ANSWER = "NO ANSWER"


@dataclass(frozen=True, slots=True)
class AtResponse:
    """The information lines of one command and how it ended."""

    command: str
    lines: tuple[str, ...]
    final: Final
    error: str | None = None  # the code or text after +CME ERROR: / +CMS ERROR:
    offset: int = 0  # stream offset of the response's first line, for errors about its values

    @property
    def ok(self) -> bool:
        return self.final is Final.OK

    def prefixed(self, prefix: str) -> list[str]:
        """Values of the lines that start with `prefix:` (prefix removed, stripped)."""
        head = prefix + ":"
        return [line[len(head) :].strip() for line in self.lines if line.startswith(head)]


@dataclass(frozen=True, slots=True)
class Urc:
    """An unsolicited result code: a line the modem sent on its own."""

    line: str
    offset: int = 0

    @property
    def name(self) -> str:
        return self.line.split(":", 1)[0]


AtEvent = AtResponse | Urc


def _prefix_of(command: str) -> str | None:
    """`AT+CREG?` → `+CREG`; `ATI` → None (its lines carry no prefix)."""
    match = re.match(r"AT([+&][A-Z][A-Z0-9]*)", command)
    return match.group(1) if match else None


class AtParser:
    """Modem output, split anywhere, into responses and unsolicited result codes."""

    def __init__(self) -> None:
        self._stream = ByteStream()
        self._pending: str | None = None
        self._prefix: str | None = None
        self._lines: list[str] = []
        self._discarding = False
        self._line_at = 0
        self._response_at = 0

    @property
    def pending(self) -> str | None:
        return self._pending

    def expect(self, command: bytes) -> bytes:
        """Note that `command` (from `build`) is being sent; return it for writing."""
        if self._pending is not None:
            raise ValueError(f"{self._pending} is still waiting for its result; AT is one command at a time")
        text = command.decode("ascii").strip()
        self._pending = text
        self._prefix = _prefix_of(text)
        self._lines = []
        return command

    def abandon(self) -> str | None:
        """Give up on the pending command (it timed out); return its text."""
        pending, self._pending, self._lines = self._pending, None, []
        return pending

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._stream.feed(data)

    def __iter__(self) -> Iterator[AtEvent]:
        while (event := self.next_event()) is not None:
            yield event

    def next_event(self) -> AtEvent | None:
        """The next response or URC, None until more bytes arrive; CodecError after dropping a bad line."""
        while (line := self._next_line()) is not None:
            event = self._classify(line)
            if event is not None:
                return event
        return None

    def _next_line(self) -> str | None:
        stream = self._stream
        while stream:
            ends = [i for i in (stream.find(0x0D), stream.find(0x0A)) if i >= 0]
            end = min(ends) if ends else -1
            if end < 0 or end > MAX_LINE:
                if len(stream) > MAX_LINE:
                    at = stream.offset
                    stream.take(MAX_LINE + 1)
                    self._discarding = True
                    raise CodecError(at, f"line longer than {MAX_LINE} bytes without CR/LF; dropped")
                return None
            self._line_at = stream.offset
            raw = stream.take(end + 1)[:-1]
            if self._discarding:
                self._discarding = False
                continue
            if not raw:
                continue
            bad = next((i for i, byte in enumerate(raw) if not 0x20 <= byte <= 0x7E), None)
            if bad is not None:
                raise CodecError(self._line_at + bad, f"byte 0x{raw[bad]:02X} in a modem line; line dropped")
            return raw.decode("ascii")
        return None

    def _classify(self, line: str) -> AtEvent | None:
        if self._pending is None:
            if _final(line) is not None and line != "NO CARRIER":
                raise CodecError(self._line_at, f"result {line!r} with no command pending")
            return Urc(line, self._line_at)
        if line == self._pending:
            return None  # echo
        if self._prefix is not None and line.startswith(self._prefix + ":"):
            self._add(line)
            return None
        final = _final(line)
        if final is not None:
            kind, error = final
            if not self._lines:
                self._response_at = self._line_at
            response = AtResponse(self._pending, tuple(self._lines), kind, error, self._response_at)
            self._pending, self._lines = None, []
            return response
        if line.startswith(URC_PREFIXES):
            return Urc(line, self._line_at)
        self._add(line)
        return None

    def _add(self, line: str) -> None:
        if not self._lines:
            self._response_at = self._line_at
        self._lines.append(line)


def _final(line: str) -> tuple[Final, str | None] | None:
    if line in FINAL_OK or line in FINAL_ERRORS:
        return Final(line), None
    for kind in (Final.CME_ERROR, Final.CMS_ERROR):
        if line.startswith(kind.value + ":"):
            return kind, line[len(kind.value) + 1 :].strip()
    return None


# -- values ------------------------------------------------------------------------------------


class _Bad(ProtocolError):
    """A value that does not parse; `_values` turns it into a CodecError at the response's offset."""


_P = ParamSpec("_P")
_T = TypeVar("_T")
_Source = TypeVar("_Source", AtResponse, Urc, AtResponse | Urc)


def _values(func: Callable[Concatenate[_Source, _P], _T]) -> Callable[Concatenate[_Source, _P], _T]:
    """Run a value parser so that its only error is CodecError, pointing at the response."""

    @functools.wraps(func)
    def wrapper(response: _Source, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return func(response, *args, **kwargs)
        except _Bad as exc:
            raise CodecError(response.offset, str(exc)) from None

    return wrapper


def _fields(value: str) -> list[str]:
    """Split on commas outside quotes; strip the quotes."""
    out, current, quoted = [], "", False
    for char in value:
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            out.append(current.strip())
            current = ""
        else:
            current += char
    out.append(current.strip())
    return out


def _one(response: AtResponse, prefix: str) -> str:
    if not response.ok:
        raise _Bad(f"{response.command} failed: {response.final} {response.error or ''}".strip())
    values = response.prefixed(prefix)
    if len(values) != 1:
        raise _Bad(f"{response.command}: expected one {prefix}: line, got {len(values)}")
    return values[0]


def _int(text: str, what: str, base: int = 10) -> int:
    try:
        return int(text, base)
    except ValueError:
        raise _Bad(f"{what}: {text!r} is not a number") from None


@dataclass(frozen=True, slots=True)
class Signal:
    csq: int
    rssi_dbm: int | None
    ber: int | None
    bars: int


def _csq_to_dbm(csq: int) -> int | None:
    """TS 27.007 §8.5: 0 → -113 dBm or less, 1 → -111, 2..30 → -109..-53, 31 → -51 or more, 99 unknown."""
    if csq == 99:
        return None
    if not 0 <= csq <= 31:
        raise _Bad(f"CSQ {csq} out of range 0-31/99")
    return -113 + 2 * csq


def csq_to_bars(csq: int) -> int:
    """Bars as phones draw them from CSQ: unknown/0-1 none, 2-9 marginal, up to 25-31 full."""
    if csq == 99 or csq < 2:
        return 0
    return 1 + sum(csq >= edge for edge in (10, 15, 20, 25))


@_values
def parse_csq(response: AtResponse) -> Signal:
    fields = _fields(_one(response, "+CSQ"))
    if len(fields) != 2:
        raise _Bad(f"+CSQ: expected rssi,ber, got {fields}")
    csq, ber = _int(fields[0], "+CSQ rssi"), _int(fields[1], "+CSQ ber")
    return Signal(csq=csq, rssi_dbm=_csq_to_dbm(csq), ber=None if ber == 99 else ber, bars=csq_to_bars(csq))


class RegStatus(enum.IntEnum):
    NOT_REGISTERED = 0
    HOME = 1
    SEARCHING = 2
    DENIED = 3
    UNKNOWN = 4
    ROAMING = 5

    @property
    def registered(self) -> bool:
        return self in (RegStatus.HOME, RegStatus.ROAMING)


@dataclass(frozen=True, slots=True)
class Registration:
    status: RegStatus
    area: str | None = None  # LAC (+CREG) or TAC (+CEREG), hex as the modem prints it
    cell_id: str | None = None  # hex
    act: int | None = None  # access technology: 0 GSM, 2 UTRAN, 7 E-UTRAN (LTE), ...


@_values
def parse_registration(line: AtResponse | Urc, prefix: str = "+CREG") -> Registration:
    """Registration from the answer to `AT+CREG?` (it leads with <n>) or from a `+CREG:` URC.

    `prefix` is "+CREG", "+CEREG" (LTE) or "+CGREG"; the layout is the same.
    """
    if isinstance(line, AtResponse):
        value, solicited = _one(line, prefix), True
    elif line.line.startswith(prefix + ":"):
        value, solicited = line.line[len(prefix) + 1 :].strip(), False
    else:
        raise _Bad(f"not a {prefix}: line: {line.line!r}")
    fields = _fields(value)
    if solicited:
        fields = fields[1:]
    if not fields or fields == [""]:
        raise _Bad(f"registration without status: {value!r}")
    try:
        status = RegStatus(_int(fields[0], "registration status"))
    except ValueError:
        raise _Bad(f"unknown registration status {fields[0]!r}") from None
    area = fields[1] if len(fields) > 1 and fields[1] else None
    cell = fields[2] if len(fields) > 2 and fields[2] else None
    for name, hex_text in (("area", area), ("cell id", cell)):
        if hex_text is not None:
            _int(hex_text, f"registration {name}", 16)
    act = _int(fields[3], "access technology") if len(fields) > 3 and fields[3] else None
    return Registration(status, area, cell, act)


@_values
def parse_iccid(response: AtResponse) -> str:
    """The SIM's ICCID from `AT+QCCID` or `AT+CCID` (19-20 digits, a trailing F is padding)."""
    prefix = "+QCCID" if response.command.startswith("AT+QCCID") else "+CCID"
    value = _fields(_one(response, prefix))[0].upper().rstrip("F")
    if not (value.isdigit() and 18 <= len(value) <= 20):
        raise _Bad(f"{prefix}: {value!r} is not an ICCID")
    return value


@dataclass(frozen=True, slots=True)
class ServingCell:
    state: str  # SEARCH, LIMSRV, NOCONN, CONNECT
    rat: str | None = None  # LTE, GSM, WCDMA, ...
    mcc: int | None = None
    mnc: int | None = None
    cell_id: str | None = None  # hex
    area: str | None = None  # TAC (LTE) or LAC (GSM), hex
    pci: int | None = None
    earfcn: int | None = None
    band: int | None = None
    rsrp_dbm: int | None = None
    rsrq_db: int | None = None
    rssi_dbm: int | None = None
    sinr: int | None = None


def _opt_int(text: str, what: str) -> int | None:
    return None if text in ("", "-") else _int(text, what)


@_values
def parse_servingcell(response: AtResponse) -> ServingCell:
    """`AT+QENG="servingcell"`: the LTE and GSM layouts of Quectel's manual; others keep state and RAT."""
    fields = _fields(_one(response, "+QENG"))
    if len(fields) < 2 or fields[0] != "servingcell":
        raise _Bad(f'+QENG: not a "servingcell" line: {fields}')
    state = fields[1]
    if len(fields) == 2:
        return ServingCell(state)
    rat = fields[2]
    if rat == "LTE":
        # "servingcell",state,"LTE",is_tdd,MCC,MNC,cellID,PCID,earfcn,band,UL_bw,DL_bw,TAC,RSRP,RSRQ,RSSI,SINR,...
        if len(fields) < 17:
            raise _Bad(f"+QENG LTE line has {len(fields)} fields, expected at least 17")
        return ServingCell(
            state=state,
            rat=rat,
            mcc=_opt_int(fields[4], "MCC"),
            mnc=_opt_int(fields[5], "MNC"),
            cell_id=fields[6] or None,
            pci=_opt_int(fields[7], "PCID"),
            earfcn=_opt_int(fields[8], "EARFCN"),
            band=_opt_int(fields[9], "band"),
            area=fields[12] or None,
            rsrp_dbm=_opt_int(fields[13], "RSRP"),
            rsrq_db=_opt_int(fields[14], "RSRQ"),
            rssi_dbm=_opt_int(fields[15], "RSSI"),
            sinr=_opt_int(fields[16], "SINR"),
        )
    if rat == "GSM":
        # "servingcell",state,"GSM",MCC,MNC,LAC,cellid,BSIC,ARFCN,band,rxlev,...
        if len(fields) < 11:
            raise _Bad(f"+QENG GSM line has {len(fields)} fields, expected at least 11")
        rxlev = _opt_int(fields[10], "rxlev")
        return ServingCell(
            state=state,
            rat=rat,
            mcc=_opt_int(fields[3], "MCC"),
            mnc=_opt_int(fields[4], "MNC"),
            area=fields[5] or None,
            cell_id=fields[6] or None,
            rssi_dbm=None if rxlev is None else rxlev - 110,  # TS 45.008: RXLEV 0 = -110 dBm
        )
    return ServingCell(state, rat)


@dataclass(frozen=True, slots=True)
class ModuleIdentity:
    manufacturer: str
    model: str
    revision: str


@_values
def parse_ati(response: AtResponse) -> ModuleIdentity:
    """`ATI`: manufacturer, model and `Revision: ...` on three lines."""
    if not response.ok:
        raise _Bad(f"{response.command} failed: {response.final}")
    lines = [line.strip() for line in response.lines]
    revision = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Revision:")), "")
    plain = [line for line in lines if not line.startswith("Revision:")]
    if len(plain) < 2 or not revision:
        raise _Bad(f"ATI: expected manufacturer, model and revision, got {lines}")
    return ModuleIdentity(manufacturer=plain[0], model=plain[1], revision=revision)


@_values
def parse_imei(response: AtResponse) -> str:
    """`AT+CGSN` / `AT+GSN`: the 15-digit IMEI on a line of its own (some firmware prefix it)."""
    if not response.ok:
        raise _Bad(f"{response.command} failed: {response.final}")
    for line in response.lines:
        value = line.split(":", 1)[-1].strip().strip('"')
        if value.isdigit() and len(value) == 15:
            return value
    raise _Bad(f"{response.command}: no IMEI in {list(response.lines)}")


# -- network time --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NetworkTime:
    """A time the modem gave: UTC epoch ms, and the local offset the network gave with it."""

    utc_ms: int
    tz_min: int


_TIME = re.compile(r"^(\d{2}|\d{4})/(\d{2})/(\d{2}),(\d{2}):(\d{2}):(\d{2})(?:([+-])(\d{1,2}))?$")


def _network_time(text: str, tz_quarters: int | None = None) -> NetworkTime:
    """`yy/MM/dd,hh:mm:ss±zz` or `yyyy/...` local time, zz in quarter hours (or given apart)."""
    match = _TIME.fullmatch(text.strip())
    if match is None:
        raise _Bad(f"not a modem time: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    if year < 100:  # two digits: a module's power-on default is 1980 (GPS epoch) or 2000
        year += 1900 if year >= 70 else 2000
    if match.group(7) is not None:
        tz_quarters = int(match.group(8)) * (-1 if match.group(7) == "-" else 1)
    if tz_quarters is None or not -48 <= tz_quarters <= 56:
        raise _Bad(f"modem time {text!r}: time zone missing or out of range")
    try:
        local = datetime.datetime(year, month, day, hour, minute, second, tzinfo=datetime.UTC)
    except ValueError as exc:
        raise _Bad(f"modem time {text!r}: {exc}") from None
    utc_ms = int(local.timestamp()) * 1000 - tz_quarters * 15 * 60_000
    return NetworkTime(utc_ms=utc_ms, tz_min=tz_quarters * 15)


@_values
def parse_cclk(response: AtResponse) -> NetworkTime:
    """`AT+CCLK?` → `+CCLK: "26/12/01,10:20:30+32"`: the module's clock, local, zone in quarter hours."""
    return _network_time(_fields(_one(response, "+CCLK"))[0])


@_values
def parse_qlts(response: AtResponse) -> NetworkTime:
    """`AT+QLTS=2` → `+QLTS: "2026/12/01,10:20:30+32,0"`: the network's time, local; `,0` is DST."""
    value = _fields(_one(response, "+QLTS"))[0]  # the DST flag is inside the quotes
    parts = value.split(",")
    if len(parts) not in (2, 3):
        raise _Bad(f"+QLTS: expected date,time±zz[,dst], got {value!r}")
    return _network_time(f"{parts[0]},{parts[1]}")


@_values
def parse_ctze(urc: Urc) -> NetworkTime:
    """NITZ (`AT+CTZR=2`): `+CTZE: "+32",0,"2026/12/01,10:20:30"`, the zone apart, time local."""
    if not urc.line.startswith("+CTZE:"):
        raise _Bad(f"not a +CTZE: line: {urc.line!r}")
    fields = _fields(urc.line[len("+CTZE:") :].strip())
    if len(fields) < 3 or not fields[2]:
        raise _Bad(f"+CTZE without a time: {urc.line!r}")
    return _network_time(fields[2], _int(fields[0], "+CTZE zone"))
