"""The shared store for several gateway replicas: Redis (or Valkey), through redis-py's asyncio
client (``pip install 'vllm-responses-gateway[redis]'``).

Layout, under the prefix ``vgw:``:

- ``vgw:r:{id}``: a hash, the record (``owner``, ``status``, ``response``, ``input``, ``chain``,
  ``created_at``, ``expires_at``, ``background``, ``lease_until``, ``cancel``, ``last_seq``, ``size``);
- ``vgw:e:{id}``: a list, the event batches, each ``b"<first_seq>\\n" + frames``;
- ``vgw:index``: a sorted set of ids by creation time and ``vgw:sizes`` their sizes, for the size bound;
- ``vgw:c:{id}``: a hash, a conversation (``owner``, ``metadata``, ``created_at``, ``expires_at``), and
  ``vgw:ci:{id}`` a list of its items, each ``b"<item id>\n" + item JSON``.

Both keys of a response expire with ``store_ttl`` (Redis drops them itself). Every write that must
be atomic (a batch with its record, the end, a compare-and-set) is one Lua script. A Redis that is
down or slow gives ``StoreError`` within the socket timeout, never a hang.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import orjson

from .base import Conversation, History, Record, Store, StoreError

try:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError
except ImportError:  # the extra is not installed
    aioredis = None  # type: ignore[assignment]
    RedisError = Exception  # type: ignore[assignment,misc]

PREFIX = "vgw:"
SOCKET_TIMEOUT_S = 5.0

# KEYS: record, events, index, sizes. ARGV: first_seq, frames (the batch), ttl_ms.
_APPEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local count = select(2, string.gsub(ARGV[2], '\\n\\n', ''))
redis.call('RPUSH', KEYS[2], ARGV[1] .. '\\n' .. ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[1], 'last_seq', tonumber(ARGV[1]) + count - 1)
if redis.call('HGET', KEYS[1], 'status') == 'queued' then redis.call('HSET', KEYS[1], 'status', 'in_progress') end
local size = redis.call('HINCRBY', KEYS[1], 'size', string.len(ARGV[2]))
redis.call('HSET', KEYS[4], ARGV[4], size)
return 1
"""
# KEYS: record, events, index, sizes. ARGV: status, response, first_seq, frames, ttl_ms, id,
# [now: only end a running response whose lease expired before it and whose last event is first_seq-1]
_FINISH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[7] then
  local lease = redis.call('HGET', KEYS[1], 'lease_until')
  if (not lease) or lease == '' or tonumber(lease) >= tonumber(ARGV[7]) then return 0 end
  if tonumber(redis.call('HGET', KEYS[1], 'last_seq')) ~= tonumber(ARGV[3]) - 1 then return 0 end
end
if string.len(ARGV[4]) > 0 then
  local count = select(2, string.gsub(ARGV[4], '\\n\\n', ''))
  redis.call('RPUSH', KEYS[2], ARGV[3] .. '\\n' .. ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
  redis.call('HSET', KEYS[1], 'last_seq', tonumber(ARGV[3]) + count - 1)
end
local old = string.len(redis.call('HGET', KEYS[1], 'response') or '')
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'response', ARGV[2])
redis.call('HDEL', KEYS[1], 'lease_until')
local size = redis.call('HINCRBY', KEYS[1], 'size', string.len(ARGV[2]) - old + string.len(ARGV[4]))
redis.call('HSET', KEYS[4], ARGV[6], size)
return 1
"""
# KEYS: record, events, index, sizes. ARGV: owner, id.
_DELETE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('HDEL', KEYS[4], ARGV[2])
return 1
"""
# KEYS: record. ARGV: owner.
_REQUEST_CANCEL = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'cancel', 1)
return 1
"""
# KEYS: records. ARGV: lease_until.
_RENEW = """
for _, key in ipairs(KEYS) do
  if redis.call('HEXISTS', key, 'lease_until') == 1 then redis.call('HSET', key, 'lease_until', ARGV[1]) end
end
return 1
"""
# KEYS: conversation, its items. ARGV: owner, then the items. Appends only to an existing one.
_ADD_ITEMS = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
for i = 2, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
return 1
"""
# KEYS: conversation, its items. ARGV: owner, item id.
_DELETE_ITEM = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
local prefix = ARGV[2] .. '\\n'
for _, entry in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  if string.sub(entry, 1, string.len(prefix)) == prefix then
    redis.call('LREM', KEYS[2], 1, entry)
    return 1
  end
end
return 0
"""
# KEYS: conversation, its items. ARGV: owner.
_DELETE_CONVERSATION = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
"""
_FIELDS = ("owner", "status", "response", "input", "chain", "created_at", "expires_at", "background", "lease_until",
           "cancel", "last_seq")


def _record_key(rid: str) -> str:
    return f"{PREFIX}r:{rid}"


def _events_key(rid: str) -> str:
    return f"{PREFIX}e:{rid}"


INDEX = PREFIX + "index"
SIZES = PREFIX + "sizes"


class RedisStore(Store):
    name = "redis"

    def __init__(self, url: str, *, max_bytes: int, ttl: float, clock: Callable[[], float]) -> None:
        if aioredis is None:
            raise StoreError("store_backend: redis needs redis-py: pip install 'vllm-responses-gateway[redis]'")
        self.url = url
        self.max_bytes = max_bytes
        self.ttl_ms = max(1, int(math.ceil(ttl * 1000)))
        self._clock = clock
        self._redis = aioredis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT_S,
                                              socket_connect_timeout=SOCKET_TIMEOUT_S, retry_on_timeout=False)
        self._append = self._redis.register_script(_APPEND)
        self._finish = self._redis.register_script(_FINISH)
        self._delete = self._redis.register_script(_DELETE)
        self._cancel = self._redis.register_script(_REQUEST_CANCEL)
        self._renew = self._redis.register_script(_RENEW)
        self._add_items = self._redis.register_script(_ADD_ITEMS)
        self._delete_item = self._redis.register_script(_DELETE_ITEM)
        self._delete_conversation = self._redis.register_script(_DELETE_CONVERSATION)

    def _keys(self, rid: str) -> list[str]:
        return [_record_key(rid), _events_key(rid), INDEX, SIZES]

    async def _do(self, coro: Any) -> Any:
        try:
            return await coro
        except (RedisError, OSError) as exc:
            raise StoreError(f"the Redis store failed: {type(exc).__name__}: {exc}") from exc

    async def start(self) -> None:
        await self._do(self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()

    # --- writes ----------------------------------------------------------------------------------

    async def create(self, record: Record) -> None:
        key = _record_key(record.id)
        fields = {"owner": record.owner, "status": record.status, "response": record.response, "input": record.input,
                  "chain": orjson.dumps(record.chain), "created_at": repr(record.created_at),
                  "expires_at": repr(record.expires_at), "background": int(record.background),
                  "cancel": int(record.cancel_requested), "last_seq": record.last_seq,
                  "size": len(record.response) + len(record.input)}
        if record.lease_until is not None:
            fields["lease_until"] = repr(record.lease_until)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(key, mapping=fields)
        pipe.pexpire(key, self.ttl_ms)
        pipe.zadd(INDEX, {record.id: record.created_at})
        pipe.hset(SIZES, record.id, fields["size"])
        await self._do(pipe.execute())

    async def append(self, response_id: str, first_seq: int, frames: bytes) -> None:
        await self._do(self._append(keys=self._keys(response_id), args=[first_seq, frames, self.ttl_ms, response_id]))

    async def finish(self, response_id: str, status: str, response: bytes, first_seq: int, frames: bytes) -> None:
        await self._do(self._finish(keys=self._keys(response_id),
                                    args=[status, response, first_seq, frames, self.ttl_ms, response_id]))

    async def renew(self, response_ids: list[str], lease_until: float) -> None:
        if response_ids:
            await self._do(self._renew(keys=[_record_key(r) for r in response_ids], args=[repr(lease_until)]))

    async def request_cancel(self, owner: str, response_id: str) -> None:
        await self._do(self._cancel(keys=[_record_key(response_id)], args=[owner]))

    async def cancel_requested(self, response_ids: list[str]) -> list[str]:
        pipe = self._redis.pipeline(transaction=False)
        for rid in response_ids:
            pipe.hget(_record_key(rid), "cancel")
        flags = await self._do(pipe.execute())
        return [rid for rid, flag in zip(response_ids, flags) if flag == b"1"]

    async def abandon(self, response_id: str, now: float, response: bytes, first_seq: int, frames: bytes) -> bool:
        done = await self._do(self._finish(keys=self._keys(response_id),
                                           args=["failed", response, first_seq, frames, self.ttl_ms, response_id,
                                                 repr(now)]))
        return bool(done)

    async def delete(self, owner: str, response_id: str) -> bool:
        return bool(await self._do(self._delete(keys=self._keys(response_id), args=[owner, response_id])))

    # --- reads -----------------------------------------------------------------------------------

    async def get(self, owner: str, response_id: str) -> Optional[Record]:
        values = await self._do(self._redis.hmget(_record_key(response_id), _FIELDS))
        if values[0] is None or values[0].decode() != owner or float(values[6]) <= self._clock():
            return None
        lease = values[8]
        return Record(id=response_id, owner=owner, status=values[1].decode(), response=values[2], input=values[3],
                      chain=orjson.loads(values[4]), created_at=float(values[5]), expires_at=float(values[6]),
                      background=values[7] == b"1", lease_until=float(lease) if lease else None,
                      cancel_requested=values[9] == b"1", last_seq=int(values[10]))

    async def history(self, owner: str, response_ids: list[str]) -> list[Optional[History]]:
        pipe = self._redis.pipeline(transaction=False)
        for rid in response_ids:
            pipe.hmget(_record_key(rid), ("owner", "status", "input", "response", "expires_at"))
        rows = await self._do(pipe.execute())
        now = self._clock()
        found: list[Optional[History]] = []
        for rid, (who, status, input_, response, expires) in zip(response_ids, rows):
            ok = who is not None and who.decode() == owner and float(expires) > now
            found.append(History(rid, status.decode(), input_, response) if ok else None)
        return found

    async def events_after(self, response_id: str, after_seq: int) -> list[tuple[int, bytes]]:
        batches = []
        for entry in await self._do(self._redis.lrange(_events_key(response_id), 0, -1)):
            head, _, frames = entry.partition(b"\n")
            first = int(head)
            if first + frames.count(b"\n\n") - 1 > after_seq:
                batches.append((first, frames))
        return batches

    # --- conversations ---------------------------------------------------------------------------

    async def create_conversation(self, conversation: Conversation, items: list[tuple[str, bytes]]) -> None:
        c = conversation
        key, items_key = f"{PREFIX}c:{c.id}", f"{PREFIX}ci:{c.id}"
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(key, mapping={"owner": c.owner, "metadata": c.metadata, "created_at": repr(c.created_at),
                                "expires_at": repr(c.expires_at)})
        pipe.pexpire(key, self.ttl_ms)
        if items:
            pipe.rpush(items_key, *[item_id.encode() + b"\n" + item for item_id, item in items])
            pipe.pexpire(items_key, self.ttl_ms)
        await self._do(pipe.execute())

    async def get_conversation(self, owner: str, conversation_id: str) -> Optional[Conversation]:
        who, metadata, created, expires = await self._do(self._redis.hmget(
            f"{PREFIX}c:{conversation_id}", ("owner", "metadata", "created_at", "expires_at")))
        if who is None or who.decode() != owner or float(expires) <= self._clock():
            return None
        return Conversation(conversation_id, owner, metadata, float(created), float(expires))

    async def update_conversation(self, owner: str, conversation_id: str, metadata: bytes) -> bool:
        if await self.get_conversation(owner, conversation_id) is None:
            return False
        await self._do(self._redis.hset(f"{PREFIX}c:{conversation_id}", "metadata", metadata))
        return True

    async def delete_conversation(self, owner: str, conversation_id: str) -> bool:
        return bool(await self._do(self._delete_conversation(
            keys=[f"{PREFIX}c:{conversation_id}", f"{PREFIX}ci:{conversation_id}"], args=[owner])))

    async def add_items(self, owner: str, conversation_id: str, items: list[tuple[str, bytes]]) -> bool:
        items_key = f"{PREFIX}ci:{conversation_id}"
        done = await self._do(self._add_items(keys=[f"{PREFIX}c:{conversation_id}", items_key],
                                              args=[owner, *[i.encode() + b"\n" + item for i, item in items]]))
        if done:
            await self._do(self._redis.pexpire(items_key, self.ttl_ms))
        return bool(done)

    async def conversation_items(self, owner: str, conversation_id: str) -> list[bytes]:
        if await self.get_conversation(owner, conversation_id) is None:
            return []
        entries = await self._do(self._redis.lrange(f"{PREFIX}ci:{conversation_id}", 0, -1))
        return [entry.partition(b"\n")[2] for entry in entries]

    async def delete_item(self, owner: str, conversation_id: str, item_id: str) -> bool:
        return bool(await self._do(self._delete_item(
            keys=[f"{PREFIX}c:{conversation_id}", f"{PREFIX}ci:{conversation_id}"], args=[owner, item_id])))

    # --- housekeeping ----------------------------------------------------------------------------

    async def sweep(self, now: float) -> None:
        """Forget the index entries of responses Redis expired; past the size bound, drop the oldest."""
        ttl_s = self.ttl_ms / 1000
        expired = await self._do(self._redis.zrangebyscore(INDEX, "-inf", now - ttl_s))
        if expired:
            pipe = self._redis.pipeline(transaction=True)
            pipe.zrem(INDEX, *expired)
            pipe.hdel(SIZES, *expired)
            await self._do(pipe.execute())
        sizes = await self._do(self._redis.hgetall(SIZES))
        total = sum(int(v) for v in sizes.values())
        if total <= self.max_bytes:
            return
        for rid in await self._do(self._redis.zrange(INDEX, 0, -1)):
            if total <= self.max_bytes:
                break
            total -= int(sizes.get(rid, 0))
            name = rid.decode()
            pipe = self._redis.pipeline(transaction=True)
            pipe.delete(_record_key(name), _events_key(name))
            pipe.zrem(INDEX, rid)
            pipe.hdel(SIZES, rid)
            await self._do(pipe.execute())
