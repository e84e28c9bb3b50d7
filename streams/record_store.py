"""Redis storage for source states and shared records (the thin I/O edge of record_builder).

Every call works on a whole batch in one round trip. Records are written with compare-and-set
on their version: a worker that built a person's record from data another worker has since
changed finds the version moved, and builds again from fresh data. So many workers need no
lock, and the last write always reflects the newest states.

A shared record is not stored: it is a pure function of its members' source states
(record_builder.build_record), so it is built again when read, from the states and the version
and time kept in its metadata. What is kept instead is a digest of each part of the record,
which tells whether a rebuilt record says anything new and which sections changed.

Layout (prefix carebus:), values compressed JSON (`pack`/`unpack`):
  source:<source key>     source state (record_builder.new_source_state)
  record_meta:<person id> hash: version, digests (record_builder.part_digests, or "retired"), at
                          (updated_at of that version), emitted (0/1), change (JSON: sections,
                          causes, ods; removed once the change is published)
  members:<person id>     set of source keys (written by identity_store: its MEMBERS)
  stats                   persons_with_records, kept by the write script
"""
from __future__ import annotations

import threading
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis
import zstandard

from streams import record_builder
from streams.identity_store import MEMBERS, STATS

P = "carebus:"
KEY_PATTERNS = ("source:*", "record:*", "record_meta:*")
RETIRED = b"retired"

# ARGV: per write: person, expected version, new version, digests ('retired' = no members), at,
# change JSON. Returns the persons whose version had moved (their writes were not made).
_WRITE = """
local failed = {}
for i = 1, #ARGV, 6 do
  local person, expected, version = ARGV[i], ARGV[i+1], ARGV[i+2]
  local meta = '""" + P + """record_meta:'..person
  local cur = redis.call('HMGET', meta, 'version', 'digests')
  if (cur[1] or '0') ~= expected then
    failed[#failed+1] = person
  else
    local was_live = cur[1] and cur[2] ~= 'retired'
    local live = ARGV[i+3] ~= 'retired'
    if live and not was_live then redis.call('HINCRBY', '""" + STATS + """', 'persons_with_records', 1) end
    if was_live and not live then redis.call('HINCRBY', '""" + STATS + """', 'persons_with_records', -1) end
    redis.call('HSET', meta, 'version', version, 'digests', ARGV[i+3], 'at', ARGV[i+4], 'emitted', '0',
               'change', ARGV[i+5])
  end
end
return failed
"""

# ARGV: person ids. Returns per person: n members, members..., version, digests, emitted, change, at.
_READ = """
local out = {}
for _, p in ipairs(ARGV) do
  local members = redis.call('SMEMBERS', '""" + MEMBERS + """'..p)
  out[#out+1] = #members
  for _, m in ipairs(members) do out[#out+1] = m end
  local meta = redis.call('HMGET', '""" + P + """record_meta:'..p, 'version', 'digests', 'emitted', 'change', 'at')
  for j = 1, 5 do out[#out+1] = meta[j] or '' end
end
return out
"""

# ARGV: person id. Returns version, digests, at, then the packed state of each member.
_READ_RECORD = """
local meta = redis.call('HMGET', '""" + P + """record_meta:'..ARGV[1], 'version', 'digests', 'at')
local out = {meta[1] or '', meta[2] or '', meta[3] or ''}
for _, m in ipairs(redis.call('SMEMBERS', '""" + MEMBERS + """'..ARGV[1])) do
  out[#out+1] = redis.call('GET', '""" + P + """source:'..m) or ''
end
return out
"""

_MARK_EMITTED = """
for i = 1, #ARGV, 2 do
  local meta = '""" + P + """record_meta:'..ARGV[i]
  if redis.call('HGET', meta, 'version') == ARGV[i+1] then
    redis.call('HSET', meta, 'emitted', '1')
    redis.call('HDEL', meta, 'change')
  end
end
"""


# A preset dictionary: one synthetic source state of each system (no patient's data). A source
# state is ~2 KB of JSON whose keys and provenance repeat in every state; with the dictionary it
# compresses to ~400 bytes (an ADT patient's state: 2.3 KB of JSON, 392 bytes). The file must never change: states written with it are
# read with it (STATE_DICTIONARY_SHA256 guards it in tests); a new dictionary gets a new format byte.
STATE_DICTIONARY = (Path(__file__).parent / "source_state.zdict").read_bytes()
STATE_DICTIONARY_SHA256 = "7ad8e94227feecd5929131899b297be847e530dad364b6773f648529dd3d371b"

# The first byte of a stored state says how it was written:
#   0x02  zstd with the dictionary (what `pack` writes)
#   0x01  zlib with the dictionary (until the sixth session of 2026-11-26)
#   0x78  a zlib header: zlib without one (before that)
# zstd, because zlib has no way to load a dictionary once and keep it: every state paid for a copy
# of a loaded compressor (its window and tables), 28 of the 30 us a state took to pack. zstd digests
# the dictionary once and shares it: 11 us to pack, 13 to unpack (against 21), a little smaller.
_ZSTD = b"\x02"
_ZLIB_WITH_DICTIONARY = b"\x01"
_ZSTD_DICTIONARY = zstandard.ZstdCompressionDict(STATE_DICTIONARY, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
# A zstd compressor or decompressor must not be used by two threads at once (a shared one
# corrupts states or crashes the process: tests/unit/test_record_store_format.py). Every caller is
# on one thread today (the link worker, the delivery service's event loop), but `pack` and `unpack`
# take no stand on threads: one of each per thread.
_codecs = threading.local()


def _zstd() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    try:
        return _codecs.pair
    except AttributeError:
        _codecs.pair = (zstandard.ZstdCompressor(level=1, dict_data=_ZSTD_DICTIONARY, write_checksum=True,
                                                 write_dict_id=False),
                        zstandard.ZstdDecompressor(dict_data=_ZSTD_DICTIONARY))
        return _codecs.pair


def pack(value: dict[str, Any]) -> bytes:
    # orjson: the same compact JSON as the standard library, several times faster on the hot path.
    return _ZSTD + _zstd()[0].compress(orjson.dumps(value))


def unpack(raw: bytes) -> dict[str, Any]:
    kind = raw[:1]
    if kind == _ZSTD:
        return orjson.loads(_zstd()[1].decompress(raw[1:]))
    if kind == _ZLIB_WITH_DICTIONARY:
        return orjson.loads(zlib.decompressobj(zdict=STATE_DICTIONARY).decompress(raw[1:]))
    return orjson.loads(zlib.decompress(raw))


@dataclass(frozen=True)
class StoredPerson:
    person_id: str
    members: frozenset[str]
    version: int
    digests: bytes | None        # record_builder.part_digests of that version, RETIRED, or None (never built)
    emitted: bool
    change: dict[str, Any]
    updated_at: int

    @property
    def retired(self) -> bool:
        return self.digests == RETIRED


@dataclass(frozen=True)
class RecordWrite:
    person_id: str
    expected_version: int
    record: dict[str, Any] | None       # None: the person has no members left (retired)
    digests: bytes
    change: dict[str, Any]


def record_from_reply(person_id: str, reply: Sequence[Any]) -> dict[str, Any] | None:
    """The current record from _READ_RECORD's reply (pure): built again from the members' states."""
    version, digests, at, *states = reply
    if not version or digests == RETIRED:
        return None
    member_states = [unpack(s) for s in states if s]
    if not member_states:
        return None
    return record_builder.build_record(person_id, member_states, int(version), int(at or 0))


class RedisRecordStore:
    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._write = client.register_script(_WRITE)
        self._mark = client.register_script(_MARK_EMITTED)
        self._read = client.register_script(_READ)
        self._read_record = client.register_script(_READ_RECORD)

    def source_states(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not keys:
            return {}
        values = self.r.mget([f"{P}source:{k}" for k in keys])
        return {k: unpack(v) for k, v in zip(keys, values) if v}

    def put_source_states(self, states: dict[str, dict[str, Any]]) -> None:
        if states:
            self.r.mset({f"{P}source:{k}": pack(s) for k, s in states.items()})

    def persons(self, person_ids: Iterable[str]) -> dict[str, StoredPerson]:
        ids = sorted(set(person_ids))
        if not ids:
            return {}
        raw = self._read(args=ids)
        out, i = {}, 0
        for p in ids:
            n = int(raw[i])
            members = frozenset(m.decode() for m in raw[i + 1:i + 1 + n])
            version, digests, emitted, change, at = raw[i + 1 + n:i + 6 + n]
            i += 6 + n
            out[p] = StoredPerson(p, members, int(version or b"0"), digests or None, emitted == b"1",
                                  orjson.loads(change or b"{}"), int(at or b"0"))
        return out

    def write(self, writes: Sequence[RecordWrite]) -> set[str]:
        """Versioned writes; returns the persons whose version had moved (build those again)."""
        if not writes:
            return set()
        args: list[Any] = []
        for w in writes:
            record = w.record or {}
            args += [w.person_id, str(w.expected_version), str(record.get("version", w.expected_version + 1)),
                     w.digests, str(record.get("updated_at", 0)), orjson.dumps(w.change)]
        return {x.decode() if isinstance(x, bytes) else x for x in self._write(args=args)}

    def mark_emitted(self, versions: dict[str, int]) -> None:
        if versions:
            self._mark(args=[x for p, v in versions.items() for x in (p, str(v))])

    # --- read-only views (the delivery service, monitor and tests call these) --------------------
    def record(self, person_id: str) -> dict[str, Any] | None:
        """The person's current shared record, or None."""
        return record_from_reply(person_id, self._read_record(args=[person_id]))


class AsyncRecordReader:
    """`RedisRecordStore.record` for asyncio services (the delivery service's /records)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._read_record = client.register_script(_READ_RECORD)

    async def record(self, person_id: str) -> dict[str, Any] | None:
        return record_from_reply(person_id, await self._read_record(args=[person_id]))
