"""Redis storage for source states and shared records (the thin I/O edge of record_builder).

Every call works on a whole batch in one round trip. Records are written with compare-and-set
on their version: a worker that built a person's record from data another worker has since
changed finds the version moved, and builds again from fresh data. So many workers need no
lock, and the last write always reflects the newest states.

Layout (prefix carebus:), values zlib-compressed JSON (`pack`/`unpack`): provenance repeats the
same few strings, so they shrink about four times, for microseconds of CPU:
  source:<source key>     source state (record_builder.new_source_state)
  record:<person id>      SharedRecord, latest version (read it with `unpack` or `record()`)
  record_meta:<person id> hash: version, hash (content), emitted (0/1), change (JSON: sections,
                          causes, ods; removed once the change is published)
"""
from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis

P = "carebus:"
KEY_PATTERNS = ("source:*", "record:*", "record_meta:*")

# ARGV: per write: person, expected version, new version, record JSON ('' = retire), hash, change JSON.
# Returns the persons whose version had moved (their writes were not made).
_WRITE = """
local failed = {}
for i = 1, #ARGV, 6 do
  local person, expected, version = ARGV[i], ARGV[i+1], ARGV[i+2]
  local meta = 'carebus:record_meta:'..person
  local current = redis.call('HGET', meta, 'version') or '0'
  if current ~= expected then
    failed[#failed+1] = person
  else
    if ARGV[i+3] == '' then redis.call('DEL', 'carebus:record:'..person)
    else redis.call('SET', 'carebus:record:'..person, ARGV[i+3]) end
    redis.call('HSET', meta, 'version', version, 'hash', ARGV[i+4], 'emitted', '0', 'change', ARGV[i+5])
  end
end
return failed
"""

# ARGV: person ids. Returns per person: n members, members..., version, hash, emitted, change, record.
_READ = """
local out = {}
for _, p in ipairs(ARGV) do
  local members = redis.call('SMEMBERS', 'carebus:members:'..p)
  out[#out+1] = #members
  for _, m in ipairs(members) do out[#out+1] = m end
  local meta = redis.call('HMGET', 'carebus:record_meta:'..p, 'version', 'hash', 'emitted', 'change')
  for j = 1, 4 do out[#out+1] = meta[j] or '' end
  out[#out+1] = redis.call('GET', 'carebus:record:'..p) or ''
end
return out
"""

_MARK_EMITTED = """
for i = 1, #ARGV, 2 do
  local meta = 'carebus:record_meta:'..ARGV[i]
  if redis.call('HGET', meta, 'version') == ARGV[i+1] then
    redis.call('HSET', meta, 'emitted', '1')
    redis.call('HDEL', meta, 'change')
  end
end
"""


def pack(value: dict[str, Any]) -> bytes:
    # orjson: the same compact JSON as the standard library, several times faster on the hot path.
    return zlib.compress(orjson.dumps(value), 1)


def unpack(raw: bytes) -> dict[str, Any]:
    return orjson.loads(zlib.decompress(raw))


@dataclass(frozen=True)
class StoredPerson:
    person_id: str
    members: frozenset[str]
    version: int
    content_hash: str | None
    emitted: bool
    change: dict[str, Any]
    record: dict[str, Any] | None


@dataclass(frozen=True)
class RecordWrite:
    person_id: str
    expected_version: int
    record: dict[str, Any] | None       # None: the person has no members left (retired)
    content_hash: str
    change: dict[str, Any]


class RedisRecordStore:
    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._write = client.register_script(_WRITE)
        self._mark = client.register_script(_MARK_EMITTED)
        self._read = client.register_script(_READ)

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
            version, digest, emitted, change = (x.decode() for x in raw[i + 1 + n:i + 5 + n])
            record = raw[i + 5 + n]
            i += 6 + n
            out[p] = StoredPerson(p, members, int(version or "0"), digest or None, emitted == "1",
                                  orjson.loads(change or "{}"), unpack(record) if record else None)
        return out

    def write(self, writes: Sequence[RecordWrite]) -> set[str]:
        """Versioned writes; returns the persons whose version had moved (build those again)."""
        if not writes:
            return set()
        args: list[Any] = []
        for w in writes:
            version = (w.record or {}).get("version", w.expected_version + 1)
            args += [w.person_id, str(w.expected_version), str(version),
                     pack(w.record) if w.record else "", w.content_hash,
                     orjson.dumps(w.change)]
        return {x.decode() if isinstance(x, bytes) else x for x in self._write(args=args)}

    def mark_emitted(self, versions: dict[str, int]) -> None:
        if versions:
            self._mark(args=[x for p, v in versions.items() for x in (p, str(v))])

    def record(self, person_id: str) -> dict[str, Any] | None:
        raw = self.r.get(f"{P}record:{person_id}")
        return unpack(raw) if raw else None
