"""Counts deliveries and keeps the running gauge; a metrics failure never fails a job."""

from __future__ import annotations

from worker.service.delivery import Delivery, Handler, Middleware
from worker.service.runtime import Runtime

__all__ = ["metrics_middleware"]


def metrics_middleware(rt: Runtime) -> Middleware:
    async def step(d: Delivery, nxt: Handler) -> None:
        m = rt.metrics
        m.deliveries.labels(d.path).inc()
        m.running.inc()
        try:
            await nxt(d)
        finally:
            m.running.dec()

    return step
