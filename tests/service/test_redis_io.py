"""The worker's Redis client packs commands with hiredis: same bytes as redis-py's packer, chunks
not copied, the same error for an unsendable value, and a real server understands it."""

from __future__ import annotations

import enum

import pytest
from redis.asyncio import ConnectionPool
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from contracts.redis_cancel import honour_cancellation
from tests.support.redis_server import RedisServer
from worker.service.app import redis_client
from worker.service.redis_io import HiredisPacking, hiredis_packing
from worker.settings import Settings

COMMANDS: list[tuple[object, ...]] = [
    ("SET", "k", "v"),
    (
        "XADD",
        "s",
        "MAXLEN",
        "~",
        1000,
        "*",
        "state",
        "succeeded",
        "labels",
        '{"é": "✓"}',
        "data",
        b"\xff\x00",
    ),
    ("EVAL", "return 1", 0),
    ("PEXPIRE", "k", 60000),
    ("HSET", "h", "f", 1.5, "g", 0.1, "n", -3, "big", 2**63),
    ("HSET", "h", "", b""),
    ("CONFIG GET", "maxmemory"),
    (b"CONFIG GET", "maxmemory"),
    ("SET", "k", bytearray(b"ab"), "GET"),
    ("SET", "k", memoryview(b"cd")),
]


class _Packing(HiredisPacking, Connection):
    pass


@pytest.mark.parametrize("command", COMMANDS)
def test_same_bytes_as_redis_py(command: tuple[object, ...]) -> None:
    ours = _Packing().pack_command(*command)
    assert len(ours) == 1
    assert ours[0] == b"".join(Connection().pack_command(*command))  # type: ignore[arg-type]


def test_a_chunk_is_not_copied() -> None:
    chunk = bytes(100_000)
    packed = _Packing().pack_command("XADD", "job", "*", "type", "chunk", "data", chunk)
    assert any(piece is chunk for piece in packed)  # redis-py's packer: the value sent as it is
    assert b"".join(packed) == b"".join(
        Connection().pack_command("XADD", "job", "*", "type", "chunk", "data", chunk)
    )


def test_an_unsendable_value_is_a_data_error() -> None:
    with pytest.raises(DataError):
        _Packing().pack_command("SET", "k", None)


def test_the_pool_keeps_its_connection_class_behaviour() -> None:
    pool = hiredis_packing(honour_cancellation(ConnectionPool.from_url("redis://127.0.0.1:1/0")))
    cls = pool.connection_class
    # Still a plain TCP connection that re-raises a swallowed cancellation.
    assert issubclass(cls, HiredisPacking) and issubclass(cls, Connection) and hasattr(cls, "_cancelled")
    assert hiredis_packing(pool).connection_class is cls  # idempotent


async def test_the_worker_client_talks_to_redis(redis_server: RedisServer) -> None:
    client = redis_client(Settings(_env_file=None, redis_url=redis_server.url))
    try:
        assert issubclass(client.connection_pool.connection_class, HiredisPacking)  # type: ignore[union-attr]
        async with client.pipeline(transaction=True) as pipe:
            pipe.hset("t:h", mapping={"a": "é", "b": 1.5})
            pipe.xadd("t:s", {"data": bytes(range(256)) * 100, "n": 7})
            pipe.hgetall("t:h")
            result = await pipe.execute()
        assert result[2] == {b"a": "é".encode(), b"b": b"1.5"}
        ((_, fields),) = await client.xrange("t:s")  # type: ignore[misc]
        assert fields == {b"data": bytes(range(256)) * 100, b"n": b"7"}
    finally:
        await client.aclose()


class _Level(enum.IntEnum):
    HIGH = 2


class _Count(int):
    pass


@pytest.mark.parametrize(
    "value", [_Count(5), _Level.HIGH, 2**100, -(2**70), 1e300, float("nan"), True, None, [1]]
)
def test_odd_values_pack_or_fail_as_redis_py(value: object) -> None:
    """hiredis takes exact types only: what it refuses is packed (an int subclass) or refused
    (None, a bool, a list) by redis-py's packer, with its bytes and its DataError message."""
    try:
        expected: object = b"".join(Connection().pack_command("SET", "k", value))  # type: ignore[arg-type]
    except DataError as exc:
        with pytest.raises(DataError) as info:
            _Packing().pack_command("SET", "k", value)
        assert str(info.value) == str(exc)
        return
    assert b"".join(_Packing().pack_command("SET", "k", value)) == expected
