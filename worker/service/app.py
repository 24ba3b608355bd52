"""The worker service: FastStream app + our reclaim loop + HTTP endpoints, with a clean lifecycle.

Example:
    >>> # service = Service(settings, generator=..., store=...)
    >>> # await service.start(); ...; await service.stop()

With ``TRACE_WORKER_REDIS_CLUSTER`` the broker is FastStream's ``RedisClusterBroker`` and the raw
client redis-py's ``RedisCluster`` (both routing each command to the master of its key's hash slot);
everything else is the same code (see :mod:`worker.service.redis_io` for the hash-slot rules).

Startup creates the consumer group at id 0 (FastStream would create it at ``$`` and never deliver
requests sent before the first worker started), then starts the broker's subscriber, the reclaim
loop and the HTTP server. :meth:`Service.stop` stops taking new entries, lets running jobs finish
within ``drain_timeout_s`` and releases the rest (their entries stay pending; another worker
reclaims them after the lease).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from faststream import FastStream
from faststream.redis import RedisBroker, RedisClusterBroker
from faststream.specification import AsyncAPI
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import MovedError, NoPermissionError, RedisClusterException, ResponseError

from contracts.redis_cancel import honour_cancellation, honour_cluster_cancellation
from worker import __version__
from worker.service.asyncapi import wire_document
from worker.service.cancels import CancelLoop
from worker.service.handler import build_dispatcher, document_replies, subscribe
from worker.service.health import HealthServer
from worker.service.logs import faststream_logger, mask_url
from worker.service.metrics import Metrics
from worker.service.ports import BlobStoreLike, TraceGenerator
from worker.service.reclaim import Reclaimer
from worker.service.redis_io import RedisLike, hiredis_packing, retry_redis
from worker.service.runtime import Runtime
from worker.settings import Settings, SettingsError

__all__ = ["Service", "build_app", "ensure_group"]

log = logging.getLogger("worker.service")

_DESCRIPTION = (
    "trace-worker: Perfetto traces of Micromegas processes on demand. Requests arrive on "
    "<prefix>:requests; each job replies on <prefix>:job:{<job_id>} (status, progress, chunk "
    "entries as plain field maps), keeps <prefix>:job:{<job_id>}:state current, and reports every "
    "status transition on <prefix>:events. See docs/PROTOCOL.md."
)


def redis_client(settings: Settings) -> RedisLike:
    """The raw client for replies, leases and reclaim (bytes in, bytes out): ``Redis``, or
    ``RedisCluster`` (any node's URL; the others are discovered) with ``redis_cluster``; the
    credentials of :meth:`Settings.redis_url_with_credentials`. A cancelled job task never carries
    on past a command (:mod:`contracts.redis_cancel`); on one server, commands are packed by hiredis
    (:class:`~worker.service.redis_io.HiredisPacking`)."""
    options: dict[str, Any] = {
        "decode_responses": False,
        "socket_connect_timeout": 5,
        "socket_timeout": 30,
        "health_check_interval": 10,
    }
    url = settings.redis_url_with_credentials()
    if settings.redis_cluster:
        cluster: RedisCluster = RedisCluster.from_url(url, **options)
        return honour_cluster_cancellation(cluster)
    client: Redis = Redis.from_url(url, **options)
    honour_cancellation(client.connection_pool)
    hiredis_packing(client.connection_pool)
    return client


async def ensure_group(redis: RedisLike, stream: str, group: str) -> None:
    """Create the consumer group at id 0 (MKSTREAM); an existing group is fine."""
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def check_cluster_mode(redis: RedisLike, settings: Settings) -> None:
    """Fail fast on a wrong ``redis_cluster``: a standalone server behind a cluster client, or a
    cluster node behind a plain client (found by ``INFO cluster``; an ACL that denies INFO leaves
    the MOVED replies of :func:`cluster_mode_error` to tell).

    Raises:
        SettingsError: the server's cluster mode and the setting disagree (exit status 2, no retry).
    """
    if isinstance(redis, RedisCluster):
        return  # the cluster client's first command fails with "Cluster mode is not enabled"
    try:
        info = await redis.info("cluster")
    except NoPermissionError:
        return
    if info.get("cluster_enabled") in (1, "1", b"1"):
        raise cluster_mode_error(settings, cluster_node=True)


def cluster_mode_error(settings: Settings, *, cluster_node: bool) -> SettingsError:
    """The one-line configuration error of a wrong ``redis_cluster`` (``cluster_node``: the server
    is a Redis Cluster node, so the setting is off; otherwise on against a standalone server)."""
    url = mask_url(settings.redis_url)
    if cluster_node:
        return SettingsError(
            f"bad settings: {url} is a Redis Cluster node: set TRACE_WORKER_REDIS_CLUSTER=true"
        )
    return SettingsError(
        f"bad settings: TRACE_WORKER_REDIS_CLUSTER=true but {url} is not a Redis Cluster node "
        "(cluster mode is not enabled)"
    )


def build_app(rt: Runtime) -> tuple[FastStream, RedisBroker, Reclaimer]:
    """The FastStream app (subscriber + AsyncAPI document) and the reclaim loop for a runtime."""
    settings = rt.settings
    broker_class = RedisClusterBroker if settings.redis_cluster else RedisBroker
    broker = broker_class(
        settings.redis_url_with_credentials(),  # FastStream takes the credentials in the URL
        graceful_timeout=settings.drain_timeout_s,
        log_level=logging.DEBUG,  # per-message lines from FastStream; ours carry the job context
        logger=faststream_logger(),
    )
    dispatcher = build_dispatcher(rt)
    rt.consuming = subscribe(broker, rt, dispatcher)
    document_replies(broker, rt)
    spec = AsyncAPI(broker, title="trace-worker", version=__version__, description=_DESCRIPTION)
    keys = rt.keys

    async def create_group() -> None:
        for stream in (keys.requests, keys.cancels):

            async def create(name: str = stream) -> None:
                try:
                    await check_cluster_mode(rt.redis, settings)
                    await ensure_group(rt.redis, name, keys.group)
                except MovedError as exc:
                    if settings.redis_cluster:
                        raise
                    raise cluster_mode_error(settings, cluster_node=True) from exc
                except RedisClusterException as exc:
                    if "cluster mode is not enabled" not in str(exc).lower():
                        raise
                    raise cluster_mode_error(settings, cluster_node=False) from exc

            await retry_redis(create, what="group create", give_up_after_s=30)

    app = FastStream(broker, specification=spec, on_startup=[create_group], logger=faststream_logger())
    return app, broker, Reclaimer(rt, dispatcher)


class Service:
    """One worker process's service.

    Args:
        settings: the settings.
        generator: produces traces (``worker.service.generator.PipelineGenerator`` in production).
        store: the blob store.
        redis: a client to use instead of one built from the settings.
        metrics: metrics to use (a fresh registry by default).
        consumer: consumer name override.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        generator: TraceGenerator,
        store: BlobStoreLike,
        redis: RedisLike | None = None,
        metrics: Metrics | None = None,
        consumer: str | None = None,
    ) -> None:
        self.rt = Runtime(
            settings=settings,
            redis=redis or redis_client(settings),
            generator=generator,
            store=store,
            metrics=metrics or Metrics(),
            consumer=consumer or settings.consumer_name,
        )
        calls = getattr(generator, "source_calls", None)
        if callable(calls):
            self.rt.metrics.watch_source_calls(calls)
        self.app, self.broker, self.reclaimer = build_app(self.rt)
        self._asyncapi: str | None = None
        self.cancels = CancelLoop(self.rt)
        self.http: HealthServer | None = None
        if settings.http_host:
            self.http = HealthServer(self.rt, self.asyncapi_json, settings.http_host, settings.http_port)

    def asyncapi_json(self) -> str:
        """The AsyncAPI document (JSON text). Static for the process, so built once (building it
        takes tens of milliseconds on the event loop) and served from memory after."""
        if self._asyncapi is None:
            doc = json.loads(self.app.schema.to_specification().to_json())
            self._asyncapi = json.dumps(wire_document(doc, self.rt.keys))
        return self._asyncapi

    async def start(self) -> None:
        s = self.rt.settings
        log.info(
            "starting consumer %s on %s (group %s, concurrency %d, redis %s%s, %s event loop)",
            self.rt.consumer,
            self.rt.keys.requests,
            self.rt.keys.group,
            s.worker_concurrency,
            mask_url(s.redis_url),
            ", cluster mode" if s.redis_cluster else "",
            type(asyncio.get_running_loop()).__module__.partition(".")[0],  # uvloop or asyncio
        )
        await self.app.start()
        self.reclaimer.start()
        self.cancels.start()
        if self.http is not None:
            await self.http.start()

    async def stop(self) -> None:
        """Graceful stop: no new entries; running jobs get ``drain_timeout_s``, then are released."""
        rt = self.rt
        rt.stopping.set()
        await self.reclaimer.stop()
        await self.cancels.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + rt.settings.drain_timeout_s
        await self.app.stop()  # waits up to drain_timeout_s for subscriber jobs, then cancels them
        jobs = set(self.reclaimer.jobs)
        if jobs:
            _, late = await asyncio.wait(jobs, timeout=max(0.0, deadline - loop.time()))
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        # FastStream cancels the handlers it gave up on without waiting for their cleanup (lease
        # release); wait for it before closing the client.
        running = set(rt.active.values())
        if running:
            await asyncio.wait(running, timeout=30)
        await rt.settle()
        if self.http is not None:
            await self.http.stop()
        await _close(rt.generator.aclose(), "generator")
        aclose: Any = getattr(rt.store, "aclose", None)
        if aclose is not None:
            await _close(aclose(), "blob store")
        if rt.slots is not None:
            await _close(rt.slots.aclose(), "redis cluster masters")
        await _close(rt.redis.aclose(), "redis")
        log.info("stopped")


async def _close(coro: Any, what: str) -> None:
    try:
        await coro
    except Exception:
        log.warning("closing %s failed", what, exc_info=True)
