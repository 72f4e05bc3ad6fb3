"""The pgoutput wire format, parsed into small immutable messages.

Reference: PostgreSQL's "Logical Replication Message Formats". We ask for protocol 1, or 2
where the server has it, without `streaming` and without `two_phase`, so every
transaction arrives whole, after it committed, between one Begin and one Commit; the
transaction id that protocol 2 adds to data messages is present only in streamed
transactions, so the layouts below are the same for both versions.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

#: Microseconds between the Unix epoch and PostgreSQL's (2000-01-01 UTC).
_PG_EPOCH_US = 946_684_800_000_000

_I8 = struct.Struct("!b")
_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_I64 = struct.Struct("!q")
_U64 = struct.Struct("!Q")


class ProtocolError(Exception):
    """The server sent something this parser does not understand."""


@dataclass(frozen=True, slots=True)
class Begin:
    #: LSN of the transaction's commit record.
    final_lsn: int
    #: Commit time, seconds since the Unix epoch.
    commit_time: float
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    commit_lsn: int
    #: LSN just past the commit record: what the slot is acknowledged up to.
    end_lsn: int
    commit_time: float


@dataclass(frozen=True, slots=True)
class Origin:
    lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    typmod: int
    #: Part of the replica identity (every column with REPLICA IDENTITY FULL).
    key: bool


@dataclass(frozen=True, slots=True)
class Relation:
    relid: int
    schema: str
    table: str
    replica_identity: str
    columns: tuple[Column, ...]


@dataclass(frozen=True, slots=True)
class TypeInfo:
    oid: int
    schema: str
    name: str


#: One column's value: None for NULL, `UNCHANGED` for an unchanged TOASTed value the
#: server did not send, else the text form (str) or, for binary, bytes.
Value = str | bytes | None


class _Unchanged:
    """The server left out an unchanged TOASTed value ('u' in TupleData)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()

Tuple = tuple[Value | _Unchanged, ...]


@dataclass(frozen=True, slots=True)
class Insert:
    relid: int
    new: Tuple


@dataclass(frozen=True, slots=True)
class Update:
    relid: int
    #: The old row ('O', REPLICA IDENTITY FULL), only its key ('K'), or None.
    old: Tuple | None
    old_kind: Literal["O", "K", ""]
    new: Tuple


@dataclass(frozen=True, slots=True)
class Delete:
    relid: int
    old: Tuple
    old_kind: Literal["O", "K"]


@dataclass(frozen=True, slots=True)
class Truncate:
    relids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, slots=True)
class Message:
    """A logical decoding message (`pg_logical_emit_message`)."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Decoded = (
    Begin | Commit | Origin | Relation | TypeInfo | Insert | Update | Delete | Truncate | Message
)


def pg_time(microseconds: int) -> float:
    """A pgoutput timestamp (microseconds since 2000-01-01) as Unix seconds."""
    return (microseconds + _PG_EPOCH_US) / 1_000_000


def format_lsn(lsn: int) -> str:
    """PostgreSQL's text form of an LSN, `16/B374D848`."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _unpack(self, fmt: struct.Struct) -> int:
        try:
            (value,) = fmt.unpack_from(self.data, self.pos)
        except struct.error:
            raise ProtocolError("message ends early") from None
        self.pos += fmt.size
        return int(value)

    def i8(self) -> int:
        return self._unpack(_I8)

    def i16(self) -> int:
        return self._unpack(_I16)

    def i32(self) -> int:
        return self._unpack(_I32)

    def u32(self) -> int:
        return self._unpack(_U32)

    def i64(self) -> int:
        return self._unpack(_I64)

    def u64(self) -> int:
        return self._unpack(_U64)

    def byte(self) -> str:
        if self.pos >= len(self.data):
            raise ProtocolError("message ends early")
        char = chr(self.data[self.pos])
        self.pos += 1
        return char

    def string(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise ProtocolError("unterminated string")
        text = self.data[self.pos : end].decode("utf-8")
        self.pos = end + 1
        return text

    def take(self, size: int) -> bytes:
        if size < 0 or self.pos + size > len(self.data):
            raise ProtocolError("message ends early")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def tuple(self) -> Tuple:
        values, self.pos = _read_tuple(self.data, self.pos)
        return values


_UNPACK_I16 = _I16.unpack_from
_UNPACK_I32 = _I32.unpack_from


def _read_tuple(data: bytes, pos: int) -> tuple[Tuple, int]:
    """TupleData from `pos`: (values, position after). The hot path: every row goes
    through here, so it indexes bytes directly instead of calling the reader's methods,
    and checks the end once, after the loop (a slice past the end is only shorter)."""
    try:
        (count,) = _UNPACK_I16(data, pos)
        pos += 2
        values: list[Value | _Unchanged] = []
        append = values.append
        for _ in range(count):
            kind = data[pos]
            if kind == 116:  # 't': text; in the server's encoding, which must be UTF-8
                start = pos + 5
                pos = start + _UNPACK_I32(data, pos + 1)[0]
                append(data[start:pos].decode("utf-8"))
            elif kind == 110:  # 'n'
                append(None)
                pos += 1
            elif kind == 117:  # 'u': unchanged TOASTed value, not sent
                append(UNCHANGED)
                pos += 1
            elif kind == 98:  # 'b': binary
                start = pos + 5
                pos = start + _UNPACK_I32(data, pos + 1)[0]
                append(data[start:pos])
            else:
                raise ProtocolError(f"unknown column kind {chr(kind)!r}")
    except (struct.error, IndexError):
        raise ProtocolError("message ends early") from None
    if pos > len(data):
        raise ProtocolError("message ends early")
    return tuple(values), pos


_UNPACK_U32 = _U32.unpack_from


def _parse_insert(data: bytes) -> Insert:
    """The hot path of `parse`: most messages of a backlog are INSERTs."""
    if len(data) < 6 or data[5] != 78:  # 'N'
        raise ProtocolError("Insert without a new tuple")
    new, _ = _read_tuple(data, 6)
    return Insert(_UNPACK_U32(data, 1)[0], new)


def parse(data: bytes) -> Decoded:
    """One pgoutput message."""
    if data[:1] == b"I":
        return _parse_insert(data)
    r = _Reader(data)
    kind = r.byte()
    if kind == "B":
        return Begin(final_lsn=r.u64(), commit_time=pg_time(r.i64()), xid=r.u32())
    if kind == "C":
        r.i8()  # flags, unused
        return Commit(commit_lsn=r.u64(), end_lsn=r.u64(), commit_time=pg_time(r.i64()))
    if kind == "U":
        relid = r.u32()
        tag = r.byte()
        old: Tuple | None = None
        old_kind: Literal["O", "K", ""] = ""
        if tag in ("O", "K"):
            old_kind = "O" if tag == "O" else "K"
            old = r.tuple()
            tag = r.byte()
        if tag != "N":
            raise ProtocolError("Update without a new tuple")
        return Update(relid=relid, old=old, old_kind=old_kind, new=r.tuple())
    if kind == "D":
        relid = r.u32()
        tag = r.byte()
        if tag not in ("O", "K"):
            raise ProtocolError("Delete without an old tuple")
        return Delete(relid=relid, old=r.tuple(), old_kind="O" if tag == "O" else "K")
    if kind == "R":
        relid = r.u32()
        schema, table = r.string(), r.string()
        identity = r.byte()
        columns = []
        for _ in range(r.i16()):
            flags = r.i8()
            columns.append(
                Column(name=r.string(), type_oid=r.u32(), typmod=r.i32(), key=bool(flags & 1))
            )
        return Relation(
            relid=relid,
            schema=schema,
            table=table,
            replica_identity=identity,
            columns=tuple(columns),
        )
    if kind == "Y":
        return TypeInfo(oid=r.u32(), schema=r.string(), name=r.string())
    if kind == "O":
        return Origin(lsn=r.u64(), name=r.string())
    if kind == "T":
        count = r.i32()
        options = r.i8()
        return Truncate(
            relids=tuple(r.u32() for _ in range(count)),
            cascade=bool(options & 1),
            restart_identity=bool(options & 2),
        )
    if kind == "M":
        flags = r.i8()
        lsn = r.u64()
        prefix = r.string()
        return Message(
            transactional=bool(flags & 1), lsn=lsn, prefix=prefix, content=r.take(r.i32())
        )
    raise ProtocolError(
        f"unexpected pgoutput message {kind!r} (streaming or two-phase "
        "messages are not requested; is this pgoutput?)"
    )
