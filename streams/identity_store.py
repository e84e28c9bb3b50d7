"""Redis storage for the EMPI graph and the review queue (the thin I/O edge of identity_graph).

Redis is the shared state of every linking worker, persisted with an append-only file; all of
it can be rebuilt by replaying carebus.source-events.v1 from the start, so Kafka stays the
system of record. There is no lock: `ingest` and `apply` are Lua scripts, each atomic and
each one round trip for a whole batch, implementing the versioned rules of
identity_graph.MemoryGraphStore (read that first; change both together).

Layout 2 (prefix carebus:), chosen to stay small per source record: a Redis key costs some 70
bytes before its value, so small things live as fields of hashes shared by many records (kept
compact by the listpack settings in carebus/redis_server.py):
  nid:<4 hex>            hash: source key -> node id; the bucket is the first 4 hex digits of the
                         key's SHA-1 (65,536 buckets)
  n:<id>                 hash: k source key, d packed demographics, v version, h person-id hash,
                         p person id, b the node's block digests (8 bytes each, concatenated),
                         o (only between a batch's apply and its publication) the moves it made
  b:<4 hex>              hash: block -> ",id,id,...,"; a block is the 8-byte BLAKE2b digest of
                         its key (blocking.keys), bucketed by its first two bytes, the other six
                         the field. Two keys that collide only add candidates, never a link.
  e:<id>                 hash: neighbour id -> "<kind>|<own version when decided>|<match weight,
                         centibits>" (an edge written before weights existed has none: 0)
  f:<id>                 set of forbidden neighbour ids
  members:<person id>    set of source keys
  merged_into            hash: person id merged away -> the person it was merged into
  layout                 "2"
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import date
from typing import Any

import redis
import redis.asyncio

from streams import blocking
from streams.identity_graph import (BLOCK_CAP, Applied, Candidate, Ingested, KeptMoves, PairDecision, Relabel,
                                    node_hash)
from streams.record_comparison import Demographics
from schemas.errors import SetupError

P = "carebus:"
SEP = "\x1f"
RS, GS = "\x1e", "\x1d"     # record and group separators of the ingest reply
FS = "\x1c"                 # between the runs' entries in a node's kept moves
ID_CACHE = 200_000          # node ids remembered between batches (about 20 MB at most)
LAYOUT = "2"
# Every key of the index in this layout and the last (`carebus rebuild-index` removes them).
KEY_PATTERNS = ("nid:*", "person_of:*", "n:*", "b:*", "e:*", "f:*", "members:*", "review:*", "reviews:open",
                "nodeseq", "layout", "stats", "candidates_hist",
                "merged_into")


class IndexLayoutError(SetupError):
    """Redis holds an index in an older layout: it must be rebuilt from the source-events topic."""


REVIEWS_OPEN = f"{P}reviews:open"
STATS = f"{P}stats"
MEMBERS = f"{P}members:"          # + person id: the person's source keys (record_store reads them too)
NODE_SEQUENCE = f"{P}nodeseq"


def review_key(review_id: str) -> str:
    return f"{P}review:{review_id}"


def block_digest(block: str) -> bytes:
    return hashlib.blake2b(block.encode(), digest_size=8).digest()


def nid_bucket(key: str) -> str:
    return f"{P}nid:{hashlib.sha1(key.encode()).hexdigest()[:4]}"


# Shared by the scripts: node ids by source key, block membership strings.
_LUA_COMMON = """
local P = ARGV[1]
local function nid_bucket(key) return P..'nid:'..string.sub(redis.sha1hex(key), 1, 4) end
local function get_id(key) return redis.call('HGET', nid_bucket(key), key) end
-- Without h the caller writes the node's k and h itself (ingest writes the whole node at once).
local function new_id(key, h, bucket)
  local id = tostring(redis.call('INCR', P..'nodeseq'))
  if id == '1' then redis.call('SET', P..'layout', '""" + LAYOUT + """') end
  redis.call('HSET', bucket or nid_bucket(key), key, id)
  if h then redis.call('HSET', P..'n:'..id, 'k', key, 'h', h) end
  return id
end
-- A block's hash is named by the hex of its digest's first two bytes. string.format costs some
-- 2 us a call in Redis's Lua, twice per block of every record ingested: a table of the 256 byte
-- values instead (a fifth of the ingest script's time on a 30,000-record index).
local HEX = {}
for n = 0, 255 do HEX[n] = string.format('%02x', n) end
local BLOCKS = P..'b:'
local function block_loc(dg)
  local x, y = string.byte(dg, 1, 2)
  return BLOCKS..HEX[x]..HEX[y], string.sub(dg, 3, 8)
end
local function block_add(dg, id)
  local bk, f = block_loc(dg)
  local v = redis.call('HGET', bk, f) or ','
  if not string.find(v, ','..id..',', 1, true) then
    v = v..id..','
    redis.call('HSET', bk, f, v)
  end
  return v
end
local function block_remove(dg, id)
  local bk, f = block_loc(dg)
  local v = redis.call('HGET', bk, f)
  if not v then return end
  local s, e = string.find(v, ','..id..',', 1, true)
  if not s then return end
  v = string.sub(v, 1, s)..string.sub(v, e + 1)
  if v == ',' then redis.call('HDEL', bk, f) else redis.call('HSET', bk, f, v) end
end
"""

# ARGV: prefix, cap, then per node: key, hash, packed demographics, its block digests in one
# string (8 bytes each, sorted: one argument, not one per block, for the client to send).
# Returns per node: key, node id, version, blocks skipped, and its candidates in one string (one
# reply element per node, not five per candidate: parsing the reply was a third of the call):
# candidates joined by RS, each "node id GS key GS version GS '1' if an edge joins it to the node
# GS packed demographics"; and the moves an earlier run of the record left unpublished ('' when
# none: apply's `pending`).
_INGEST = _LUA_COMMON + """
local cap = tonumber(ARGV[2])
local out = {}
local i = 3
while i <= #ARGV do
  local key, h, d, all_blocks = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3]
  local blocks = {}
  for j = 1, #all_blocks, 8 do blocks[#blocks+1] = string.sub(all_blocks, j, j + 7) end
  i = i + 4
  -- Most records are new: their node is written whole, and has no state, edges or forbidden
  -- neighbours to read (four commands of some forty per record).
  local bucket = nid_bucket(key)
  local id = redis.call('HGET', bucket, key)
  local fresh = not id
  local cur = {}
  if fresh then
    id = new_id(key, nil, bucket)
  else
    cur = redis.call('HMGET', P..'n:'..id, 'd', 'v', 'b', 'o')
  end
  local nk = P..'n:'..id
  local version = tonumber(cur[2] or '0')
  local written = {}
  if cur[1] ~= d or version == 0 then
    version = version + 1
    local newset = {}
    for _, b in ipairs(blocks) do newset[b] = true end
    if cur[3] then
      for j = 1, #cur[3], 8 do
        local old = string.sub(cur[3], j, j + 7)
        if not newset[old] then block_remove(old, id) end
      end
    end
    -- The members just written are the candidates read below: no second read of each block.
    for _, b in ipairs(blocks) do written[b] = block_add(b, id) end
    if fresh then
      redis.call('HSET', nk, 'k', key, 'h', h, 'd', d, 'v', version, 'b', all_blocks)
    else
      redis.call('HSET', nk, 'd', d, 'v', version, 'b', all_blocks)
    end
  end
  -- Forbidden neighbours are skipped and linked ones flagged: one read of each per node, not
  -- one per candidate (most nodes have neither).
  local seen, linked, cands, skipped = {}, {}, {}, 0
  seen[id] = true
  if not fresh then
    for _, c in ipairs(redis.call('SMEMBERS', P..'f:'..id)) do seen[c] = true end
    for _, c in ipairs(redis.call('HKEYS', P..'e:'..id)) do linked[c] = true end
  end
  for _, b in ipairs(blocks) do
    local bk, f = block_loc(b)
    local members = written[b] or redis.call('HGET', bk, f) or ','
    -- Each member takes at least two characters (",7"): a short string is under the cap
    -- without counting its commas (which copies the string).
    local over = false
    if #members > 2 * cap + 1 then
      local _, commas = string.gsub(members, ',', ',')
      over = commas - 1 > cap
    end
    if over then
      skipped = skipped + 1
    else
      for c in string.gmatch(members, '%d+') do
        if not seen[c] then
          seen[c] = true
          local cv = redis.call('HMGET', P..'n:'..c, 'k', 'd', 'v')
          if cv[2] then
            cands[#cands+1] = table.concat({c, cv[1], cv[3], linked[c] and '1' or '', cv[2]}, '\\29')
          end
        end
      end
    end
  end
  out[#out+1] = key; out[#out+1] = id; out[#out+1] = version; out[#out+1] = skipped
  out[#out+1] = table.concat(cands, '\\30')
  out[#out+1] = cur[4] or ''    -- moves of an earlier run never published (apply's `pending`)
end
return out
"""

# ARGV: prefix, block digests... Returns key, packed demographics of each node in the blocks,
# once each.
_BLOCK_NODES = _LUA_COMMON + """
local out, seen = {}, {}
for i = 2, #ARGV do
  local bk, f = block_loc(ARGV[i])
  for id in string.gmatch(redis.call('HGET', bk, f) or '', '%d+') do
    if not seen[id] then
      seen[id] = true
      local kd = redis.call('HMGET', P..'n:'..id, 'k', 'd')
      if kd[1] then out[#out+1] = kd[1]; out[#out+1] = kd[2] or '' end
    end
  end
end
return out
"""

# ARGV: prefix, field, '1' to answer node ids too (else ''), keys (or '#' and the node id, when
# the caller has read it)... Returns the field of each key's node ('' when the key is unknown),
# each after the node's id ('' too) when asked.
_NODE_FIELD = _LUA_COMMON + """
local out = {}
local with_id = ARGV[3] == '1'
for i = 4, #ARGV do
  local id
  if string.byte(ARGV[i], 1) == 35 then id = string.sub(ARGV[i], 2) else id = get_id(ARGV[i]) end
  if with_id then out[#out+1] = id or '' end
  out[#out+1] = id and (redis.call('HGET', P..'n:'..id, ARGV[2]) or '') or ''
end
return out
"""

_OPEN_REVIEWS = """
-- KEYS[1] the open set, KEYS[1+i] review i; ARGV[i] its JSON body. Returns the 0-based indexes of new reviews.
local new = {}
for i = 1, #ARGV do
  local key = KEYS[i + 1]
  local rid = string.sub(key, string.len('""" + review_key("") + """') + 1)
  if redis.call('HSETNX', key, 'body', ARGV[i]) == 1 then
    redis.call('SADD', KEYS[1], rid)
    table.insert(new, i - 1)
  elseif redis.call('SISMEMBER', KEYS[1], rid) == 1 then
    local body = cjson.decode(redis.call('HGET', key, 'body'))
    local reason = cjson.decode(ARGV[i]).reason
    if not string.find(body.reason, reason, 1, true) then
      body.reason = body.reason .. '; ' .. reason
      redis.call('HSET', key, 'body', cjson.encode(body))
    end
  end
end
return new
"""

# ARGV: prefix, batch token, n versions, (key, node id or '', version)..., n decisions,
#       (a, b, version_b, kind or '', weight)...,
#       n forced, (a, ha, b, hb)..., n forbidden, (a, ha, b, hb)...
# Returns, per relabelled person: person, n members, (member, old person or '')...; a '' marker;
# the number of links the coherence rule refused and their (key a, key b); the number of persons
# left empty and those persons; the node ids the batch's moves were kept on (settle_pending).
_APPLY = _LUA_COMMON + """
local i = 2
-- A record is named by its node id ('#' and the id, when the caller has read it) or its key.
local function node_id(key, h)
  if string.byte(key, 1) == 35 then return string.sub(key, 2) end
  local id = get_id(key)
  if not id and h then id = new_id(key, h) end
  return id
end
local function ver(id) return tonumber(redis.call('HGET', P..'n:'..id, 'v') or '0') end
local function set_edge(a, b, kind, va, vb, w)
  redis.call('HSET', P..'e:'..a, b, kind..'|'..va..'|'..w)
  redis.call('HSET', P..'e:'..b, a, kind..'|'..vb..'|'..w)
end
local function drop_edge(a, b)
  redis.call('HDEL', P..'e:'..a, b)
  redis.call('HDEL', P..'e:'..b, a)
end
local function kind_of(raw) return string.match(raw, '^([^|]*)') end
local seeds, seed_list = {}, {}
-- Each seed remembers the batch record (or forced pair) it came from: its component's relabels
-- are kept on that record's node until published (`pending` below).
local origin = {}
local function seed(id, from)
  if not seeds[id] then seeds[id] = true; seed_list[#seed_list+1] = id; origin[id] = from end
end

local token = ARGV[i]; i = i + 1
local nv = tonumber(ARGV[i]); i = i + 1
local versions, known = {}, {}
local order = {}
for _ = 1, nv do
  versions[ARGV[i]] = tonumber(ARGV[i+2]); order[#order+1] = ARGV[i]
  if ARGV[i+1] ~= '' then known[ARGV[i]] = ARGV[i+1] end
  i = i + 3
end
local nd = tonumber(ARGV[i]); i = i + 1
local by_key = {}
for _ = 1, nd do
  local a = ARGV[i]
  by_key[a] = by_key[a] or {}
  table.insert(by_key[a], {ARGV[i+1], tonumber(ARGV[i+2]), ARGV[i+3], ARGV[i+4]})
  i = i + 5
end
local nfo = tonumber(ARGV[i]); i = i + 1
local forced = {}
for _ = 1, nfo do forced[#forced+1] = {ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3]}; i = i + 4 end
local nfb = tonumber(ARGV[i]); i = i + 1
for _ = 1, nfb do
  local a, b = node_id(ARGV[i], ARGV[i+1]), node_id(ARGV[i+2], ARGV[i+3])
  i = i + 4
  redis.call('SADD', P..'f:'..a, b); redis.call('SADD', P..'f:'..b, a)
  drop_edge(a, b); seed(a, a); seed(b, a)
end
for _, f in ipairs(forced) do
  local a, b = node_id(f[1], f[2]), node_id(f[3], f[4])
  if redis.call('SISMEMBER', P..'f:'..a, b) == 0 then set_edge(a, b, 'forced', 0, 0, 0) end
  seed(a, a); seed(b, a)
end
table.sort(order)
for _, key in ipairs(order) do
  local id = known[key] or node_id(key, nil)
  local v = id and ver(id) or -1
  if id and v == versions[key] then
    seed(id, id)
    local edges = redis.call('HGETALL', P..'e:'..id)
    for j = 1, #edges, 2 do
      local kind, own = string.match(edges[j+1], '^([^|]*)|(%d+)')
      if kind ~= 'forced' and tonumber(own) < v then drop_edge(id, edges[j]); seed(edges[j], id) end
    end
    for _, d in ipairs(by_key[key] or {}) do
      local b = node_id(d[1], nil)
      if b and ver(b) == d[2] and redis.call('SISMEMBER', P..'f:'..id, b) == 0 then
        local current = redis.call('HGET', P..'e:'..id, b)
        if not (current and kind_of(current) == 'forced') then
          if d[3] ~= '' then set_edge(id, b, d[3], v, d[2], d[4]); seed(b, id)
          elseif current then drop_edge(id, b); seed(b, id) end
        end
      end
    end
  end
end

-- The coherence rule (identity_graph.cannot_join and cluster_people, in Lua: change both together):
-- two different valid NHS numbers (the first field of the packed demographics).
local function nhs_of(d) return string.match(d or '', '^([^\\31]*)') end
local function cannot_join(a, b) return a.nhs ~= '' and b.nhs ~= '' and a.nhs ~= b.nhs end

local out, done, olds, refused, pending = {}, {}, {}, {}, {}
for _, s in ipairs(seed_list) do
  if not done[s] then
    local home = origin[s]
    local comp, todo, raw_edges = {s}, {s}, {}
    done[s] = true
    while #todo > 0 do
      local cur = table.remove(todo)
      local es = redis.call('HGETALL', P..'e:'..cur)
      raw_edges[cur] = es
      for j = 1, #es, 2 do
        local n = es[j]
        if not done[n] then done[n] = true; comp[#comp+1] = n; todo[#todo+1] = n end
      end
    end
    local info, numbers, distinct = {}, {}, 0
    for _, id in ipairs(comp) do
      local r = redis.call('HMGET', P..'n:'..id, 'k', 'h', 'p', 'd')
      local nhs = nhs_of(r[4])
      info[id] = {k = r[1], h = r[2], p = r[3], nhs = nhs}
      if nhs ~= '' and not numbers[nhs] then numbers[nhs] = true; distinct = distinct + 1 end
    end
    local edges = {}
    -- With at most one NHS number among them no rule can refuse a link: one person, no sorting.
    if distinct > 1 then for id, es in pairs(raw_edges) do
      for j = 1, #es, 2 do
        local n = es[j]
        if id < n then
          local kind, w = string.match(es[j+1], '^([^|]*)|%d+|?(%-?%d*)$')
          local ha, hb = info[id].h, info[n].h
          if hb < ha then ha, hb = hb, ha end
          edges[#edges+1] = {id, n, kind == 'forced' and 0 or 1, tonumber(w) or 0, ha, hb}
        end
      end
    end end
    table.sort(edges, function(x, y)
      if x[3] ~= y[3] then return x[3] < y[3] end
      if x[4] ~= y[4] then return x[4] > y[4] end
      if x[5] ~= y[5] then return x[5] < y[5] end
      return x[6] < y[6]
    end)
    local parent, groups = {}, {}
    for _, id in ipairs(comp) do parent[id] = id; groups[id] = {id} end
    if distinct <= 1 then
      for j = 2, #comp do parent[comp[j]] = comp[1]; groups[comp[j]] = nil end
      groups[comp[1]] = comp
    end
    local function root(x) while parent[x] ~= x do x = parent[x] end return x end
    for _, e in ipairs(edges) do
      local ra, rb = root(e[1]), root(e[2])
      if ra ~= rb then
        local ok = true
        if e[3] == 1 then
          for _, x in ipairs(groups[ra]) do
            for _, y in ipairs(groups[rb]) do
              if cannot_join(info[x], info[y]) then ok = false; break end
            end
            if not ok then break end
          end
        end
        if ok then
          parent[rb] = ra
          for _, y in ipairs(groups[rb]) do table.insert(groups[ra], y) end
          groups[rb] = nil
        else
          refused[#refused+1] = info[e[1]].k; refused[#refused+1] = info[e[2]].k
        end
      end
    end
    for _, gid in ipairs(comp) do
      local cluster = groups[gid]
      if cluster then
        local best = nil
        for _, id in ipairs(cluster) do
          if best == nil or info[id].h < best then best = info[id].h end
        end
        local person = 'PER-'..best
        local moved = {}
        for _, id in ipairs(cluster) do
          local old = info[id].p
          if old ~= person then
            if old then redis.call('SREM', P..'members:'..old, info[id].k); olds[old] = true end
            redis.call('HSET', P..'n:'..id, 'p', person)
            redis.call('SADD', P..'members:'..person, info[id].k)
            moved[#moved+1] = info[id].k; moved[#moved+1] = old or ''
          end
        end
        if #moved > 0 then
          local relabel = {person, #cluster}
          for _, id in ipairs(cluster) do relabel[#relabel+1] = info[id].k end
          relabel[#relabel+1] = #moved / 2
          for _, x in ipairs(moved) do relabel[#relabel+1] = x end
          for _, x in ipairs(relabel) do out[#out+1] = x end
          pending[home] = pending[home] or {}
          table.insert(pending[home], table.concat(relabel, '\\31'))
        end
      end
    end
  end
end
out[#out+1] = ''
out[#out+1] = #refused / 2
for _, k in ipairs(refused) do out[#out+1] = k end
local emptied = {}
for old, _ in pairs(olds) do
  if redis.call('SCARD', P..'members:'..old) == 0 then emptied[#emptied+1] = old end
end
out[#out+1] = #emptied
for _, old in ipairs(emptied) do out[#out+1] = old end
-- What this batch moved, kept on its records' nodes until its outputs are published
-- (RedisGraphStore.settle_pending): a run that stops in between leaves it for the replay, which
-- moves nobody (the links are already there) but must still publish the moves and rebuild the
-- persons they emptied. The token tells a later batch of the same worker from a replay.
-- A caller without a token publishes nothing (tests, benchmarks): nothing is kept for it. Runs
-- keep their moves side by side (FS between them): a relink, or a review decision, moving people
-- homed on a node must not erase what a stopped batch left there for its replay.
local emptied_list = table.concat(emptied, '\\31')
for home, relabels in pairs(token ~= '' and pending or {}) do
  local key = P..'n:'..home
  local entry = token..'\\29'..table.concat(relabels, '\\30')..'\\29'..emptied_list
  -- Nearly always the node keeps nothing yet: one command, as when it held a single run's.
  if redis.call('HSETNX', key, 'o', entry) == 0 then
    redis.call('HSET', key, 'o', redis.call('HGET', key, 'o')..'\\28'..entry)
  end
  out[#out+1] = home
end
return out
"""


# ARGV: prefix, (node id, batch token)... Drops that batch's pending moves from each node, and
# leaves any other run's.
_SETTLE_PENDING = """
local P = ARGV[1]
for i = 2, #ARGV, 2 do
  local key, token = P..'n:'..ARGV[i], ARGV[i + 1]
  local o = redis.call('HGET', key, 'o')
  if o then
    local left = {}
    for entry in string.gmatch(o, '[^\\28]+') do
      if string.sub(entry, 1, #token + 1) ~= token..'\\29' then left[#left+1] = entry end
    end
    if #left == 0 then redis.call('HDEL', key, 'o') else redis.call('HSET', key, 'o', table.concat(left, '\\28')) end
  end
end
return 0
"""


def kept_moves(raw: str) -> tuple[KeptMoves, ...]:
    """A node's pending moves (apply's `pending`), one entry per run that kept some: its token,
    its relabels, the persons it emptied. Pure."""
    return tuple(_kept_entry(entry) for entry in raw.split(FS)) if raw else ()


def _kept_entry(entry: str) -> KeptMoves:
    token, relabels, emptied = entry.split(GS)
    out = []
    for one in relabels.split(RS) if relabels else ():
        f = one.split(SEP)
        n = int(f[1])
        moved = f[3 + n:]
        out.append(Relabel(f[0], frozenset(f[2:2 + n]),
                           {moved[2 * j]: moved[2 * j + 1] or None for j in range(int(f[2 + n]))}))
    return KeptMoves(token, tuple(out), frozenset(emptied.split(SEP)) if emptied else frozenset())


def pack(d: Demographics) -> str:
    # A valid date as ISO (with '-'), digits as sent without.
    dob = d.birth_date.isoformat() if d.birth_date else d.birth_as_sent or ""
    return SEP.join((d.nhs or "", d.given, d.family, dob, d.sex or "", d.postcode or ""))


def unpack(key: str, raw: str) -> Demographics:
    nhs, given, family, dob, sex, postcode = raw.split(SEP)
    valid = "-" in dob
    return Demographics(key, nhs or None, given, family, date.fromisoformat(dob) if valid else None, sex or None,
                        postcode or None, None if valid else dob or None)


def _s(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


class RedisGraphStore:
    """identity_graph.GraphStore over Redis: each call is one atomic script, one round trip."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._ingest = client.register_script(_INGEST)
        self._apply = client.register_script(_APPLY)
        self._node_field = client.register_script(_NODE_FIELD)
        self._block_nodes = client.register_script(_BLOCK_NODES)
        self._open_reviews = client.register_script(_OPEN_REVIEWS)
        self._settle_pending = client.register_script(_SETTLE_PENDING)
        # Node ids of keys read by the last ingests: a key's node id never changes, so apply can
        # name records by id and spare Redis a key lookup per decision.
        self._ids: dict[str, str] = {}
        self._ahead: redis.connection.AbstractConnection | None = None     # start_ingest's connection
        self._check_layout()

    def _named(self, key: str) -> str:
        node = self._ids.get(key)
        return f"#{node}" if node else key

    def _check_layout(self) -> None:
        layout = self.r.get(f"{P}layout")
        if layout is None and self.r.exists(f"{P}nodeseq"):
            raise IndexLayoutError(
                "Redis holds an identity index written by an older carebus (layout 1). Rebuild it from "
                "Kafka: stop the link workers, run `carebus rebuild-index`, start them again.")
        if layout is None:
            self.r.setnx(f"{P}layout", LAYOUT)
        elif layout.decode() != LAYOUT:
            raise IndexLayoutError(f"Redis holds identity index layout {layout.decode()}, this carebus "
                                   f"reads layout {LAYOUT}: run `carebus rebuild-index`")

    def ingest(self, demos: Sequence[Demographics]) -> dict[str, Ingested]:
        return self._ingested(self._ingest(args=self._ingest_args(demos)))

    def start_ingest(self, demos: Sequence[Demographics]) -> Callable[[], dict[str, Ingested]]:
        """`ingest`, sent now on a connection of its own and read when the result is called, so
        that Redis runs it while the caller finishes the batch before (link_pipeline). Results are
        read in the order the ingests were started; `abandon_ingests` drops any left unread."""
        args = self._ingest_args(demos)
        if self._ahead is None:
            self.r.script_load(_INGEST)       # EVALSHA below: the script must be in Redis's cache
            self._ahead = self.r.connection_pool.make_connection()
        conn = self._ahead
        try:
            conn.send_command("EVALSHA", self._ingest.sha, 0, *args)
        except BaseException:
            self.abandon_ingests()
            raise
        # redis-py retries a failed send on a new socket, silently: the replies still owed on the
        # old one are gone, and the next reply read would be another batch's.
        sent_on = conn._sock

        def result() -> dict[str, Ingested]:
            if conn._sock is not sent_on:
                self.abandon_ingests()
                raise redis.ConnectionError("the ingest connection was reset: its reply is lost")
            try:
                raw = conn.read_response()
            except redis.exceptions.NoScriptError:     # Redis restarted since: run it again, loading it
                raw = self._ingest(args=args)
            except BaseException:
                self.abandon_ingests()
                raise
            return self._ingested(raw)
        return result

    def abandon_ingests(self) -> None:
        """Forget ingests started and not read (their replies would answer the next one)."""
        if self._ahead is not None:
            self._ahead.disconnect()
            self._ahead = None

    def _ingest_args(self, demos: Sequence[Demographics]) -> list[Any]:
        args: list[Any] = [P, BLOCK_CAP]
        for d in demos:
            args += [d.key, node_hash(d.key), pack(d), b"".join(sorted({block_digest(b) for b in blocking.keys(d)}))]
        return args

    def _ingested(self, raw: list[Any]) -> dict[str, Ingested]:
        out, ids = {}, self._ids
        for i in range(0, len(raw), 6):
            key = raw[i].decode()
            ids[key] = raw[i + 1].decode()
            cands = []
            for one in raw[i + 4].decode().split(RS) if raw[i + 4] else ():
                node, ckey, version, linked, packed = one.split(GS, 4)
                ids[ckey] = node
                cands.append(Candidate(ckey, unpack(ckey, packed), int(version), linked == "1"))
            cands.sort(key=lambda c: c.key)
            out[key] = Ingested(int(raw[i + 2]), tuple(cands), int(raw[i + 3]), kept_moves(_s(raw[i + 5])),
                                node=ids[key])
        if len(ids) > ID_CACHE:
            self._ids = {}
        return out

    def apply(self, versions: dict[str, int], decisions: Sequence[PairDecision],
              forced: Sequence[tuple[str, str]] = (), forbidden: Sequence[tuple[str, str]] = (),
              token: str = "") -> Applied:
        args: list[Any] = [P, token, len(versions)]
        for k, v in versions.items():
            args += [k, self._ids.get(k, ""), v]
        args.append(len(decisions))
        for d in decisions:
            args += [d.a, self._named(d.b), d.version_b, d.kind or "", d.weight]
        for pairs in (forced, forbidden):
            args.append(len(pairs))
            for a, b in pairs:
                args += [a, node_hash(a), b, node_hash(b)]
        raw = [_s(x) for x in self._apply(args=args)]
        relabels, i = [], 0
        while raw[i] != "":
            person, n = raw[i], int(raw[i + 1])
            members = frozenset(raw[i + 2:i + 2 + n])
            i += 2 + n
            m = int(raw[i])
            moved = {raw[i + 1 + 2 * j]: (raw[i + 2 + 2 * j] or None) for j in range(m)}
            i += 1 + 2 * m
            relabels.append(Relabel(person, members, moved))
        n = int(raw[i + 1])
        pairs = raw[i + 2:i + 2 + 2 * n]
        refused = sorted({tuple(sorted(p)) for p in zip(pairs[::2], pairs[1::2])})
        i += 2 + 2 * n
        emptied = int(raw[i])
        return Applied(relabels, set(raw[i + 1:i + 1 + emptied]), refused,  # type: ignore[arg-type]
                       pending_at=raw[i + 1 + emptied:])

    def pending_of(self, keys: Sequence[str]) -> list[Ingested]:
        """The moves kept on these records' nodes (apply's `pending`), for records a batch joins or
        parts without ingesting them (review decisions): as ingests with no candidates."""
        if not keys:
            return []
        raw = [_s(x) for x in self._node_field(args=[P, "o", "1", *keys])]
        return [Ingested(0, (), 0, kept_moves(o), node=node) for node, o in zip(raw[::2], raw[1::2]) if o]

    def settle_pending(self, kept: Sequence[tuple[str, str]]) -> None:
        """The moves kept as (node id, batch token) are published: forget them (unless a later
        batch has kept its own on the node since)."""
        if kept:
            self._settle_pending(args=[P, *(x for pair in kept for x in pair)])

    # --- read-only views (the delivery service, monitor and benchmarks call these) ----------------
    def person_of(self, key: str) -> str | None:
        return self.persons_of([key]).get(key)

    def persons_of(self, keys: Sequence[str]) -> dict[str, str]:
        """The person each key belongs to now (keys not yet linked are left out)."""
        if not keys:
            return {}
        values = self._node_field(args=[P, "p", "", *map(self._named, keys)])
        return {k: _s(v) for k, v in zip(keys, values) if v}

    def demographics(self, keys: Sequence[str]) -> list[Demographics]:
        """The stored matching view of each key that has one (for relinking)."""
        if not keys:
            return []
        values = self._node_field(args=[P, "d", "", *map(self._named, keys)])
        return [unpack(k, _s(d)) for k, d in zip(keys, values) if d]

    def members(self, person_id: str) -> list[str]:
        """The source keys linked into this person (none: no such person)."""
        return sorted(_s(m) for m in self.r.smembers(f"{MEMBERS}{person_id}"))

    def keys_with_nhs_number(self, nhs: str) -> list[str]:
        """Source records that hold this (valid) NHS number: its block is the index by NHS number."""
        return sorted(d.key for d in self.demographics_in_blocks([blocking.nhs_number_key(nhs)]) if d.nhs == nhs)

    def demographics_in_blocks(self, blocks: Sequence[str]) -> list[Demographics]:
        """Every record in these blocks (blocking.keys), once, in one round trip: where a
        demographic search looks."""
        if not blocks:
            return []
        raw = [_s(x) for x in self._block_nodes(args=[P, *(block_digest(b) for b in blocks)])]
        return [unpack(key, packed) for key, packed in zip(raw[::2], raw[1::2]) if packed]

    def note_merged(self, merged: dict[str, str]) -> None:
        """Persons merged away -> their survivor, so that an old person id still leads somewhere."""
        if merged:
            self.r.hset(f"{P}merged_into", mapping=merged)

    def survivor_of(self, person_id: str) -> str | None:
        """The person a merged-away id now lives on in (following later merges), or None when the
        id is a live person or was never merged."""
        current, seen = person_id, {person_id}
        while not self.r.exists(f"{MEMBERS}{current}"):
            nxt = self.r.hget(f"{P}merged_into", current)
            if nxt is None or _s(nxt) in seen:
                return None
            current = _s(nxt)
            seen.add(current)
        return None if current == person_id else current

    def all_keys(self, batch: int = 1000):  # noqa: ANN201 - an iterator of source-key lists
        """Every source key in the index, `batch` at a time (SCAN and HSCAN: safe on a live Redis)."""
        keys: list[str] = []
        for bucket in self.r.scan_iter(match=f"{P}nid:*", count=batch):
            for raw in self.r.hscan_iter(bucket, count=batch):
                keys.append(_s(raw[0]))
                if len(keys) >= batch:
                    yield keys
                    keys = []
        if keys:
            yield keys

    def size(self) -> int:
        """Source records ever indexed."""
        return records_indexed(self.r)

    # --- reviews and statistics --------------------------------------------------------------
    def open_reviews_batch(self, bodies: dict[str, dict[str, Any]]) -> set[str]:
        """Queue reviews not seen before; returns the ids that are new. A pair already waiting for
        review that now has another reason (first seen in the review band, then found to
        contradict a record it was chained to) keeps its place and gains the reason: the person
        reviewing it should see every reason, whichever worker saw which first."""
        if not bodies:
            return set()
        ids = list(bodies)
        new = self._open_reviews(keys=[REVIEWS_OPEN] + [review_key(rid) for rid in ids],
                                 args=[json.dumps(bodies[rid]) for rid in ids])
        return {ids[int(i)] for i in new}

    def close_review(self, review_id: str, outcome: str) -> dict[str, Any] | None:
        review = review_of(self.r, review_id)
        if review is None:
            return None
        self.r.srem(REVIEWS_OPEN, review_id)
        self.r.hset(review_key(review_id), "outcome", outcome)
        return review

    def count(self, counts: dict[str, int], candidates_histogram: dict[str, int] | None = None) -> None:
        pipe = self.r.pipeline(transaction=False)
        for name, n in counts.items():
            if n:
                pipe.hincrby(STATS, name, n)
        for bucket, n in (candidates_histogram or {}).items():
            pipe.hincrby(f"{P}candidates_hist", bucket, n)
        pipe.execute()

    def candidates_histogram(self) -> dict[str, int]:
        """Records linked, by how many candidates each was compared with (bucket le<N> / gt500)."""
        return {k.decode(): int(v) for k, v in self.r.hgetall(f"{P}candidates_hist").items()}

    def stats(self) -> dict[str, int]:
        return linkage_statistics(self.r)


# --- read-only views for the other parts of carebus: the key layout stays in this module -------
def linkage_statistics(client: redis.Redis) -> dict[str, int]:
    """The linker's counters (links, merges, reviews, candidate pairs, ...) and the reviews waiting."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(STATS)
    pipe.scard(REVIEWS_OPEN)
    counters, waiting = pipe.execute()
    return {**{_s(k): int(v) for k, v in counters.items()}, "open_reviews": int(waiting)}


def review_of(client: redis.Redis, review_id: str) -> dict[str, Any] | None:
    """A review as it was queued, decided or not (None: no such review)."""
    body = client.hget(review_key(review_id), "body")
    return json.loads(body) if body is not None else None


def records_indexed(client: redis.Redis) -> int:
    """Source records ever indexed."""
    return int(client.get(NODE_SEQUENCE) or 0)


class ReviewQueue:
    """The review queue as the delivery service reads it (asyncio Redis): what waits, and one review."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.r = client

    async def waiting(self) -> list[dict[str, Any]]:
        ids = sorted(_s(b) for b in await self.r.smembers(REVIEWS_OPEN))
        if not ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for rid in ids:
            pipe.hget(review_key(rid), "body")
        return [json.loads(body) for body in await pipe.execute() if body]

    async def review(self, review_id: str) -> dict[str, Any] | None:
        body = await self.r.hget(review_key(review_id), "body")
        return json.loads(body) if body is not None else None
