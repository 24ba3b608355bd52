"""What KEDA does with a ScaledObject of ``redis-streams`` triggers, for checking the chart's renders.

The rules follow KEDA's scaler, ``pkg/scalers/redis_streams_scaler.go`` (kedacore/keda), which also
serves the ``redis-cluster-streams`` trigger: the same metadata, except the nodes are ``addresses``
(or ``hosts`` and ``ports``, comma-separated) instead of ``address`` (or ``host`` and ``port``):

- with ``consumerGroup`` set, a non-zero ``lagCount`` selects the group's lag (``XINFO GROUPS``; a group
  that does not exist yet reads as ``XLEN``); otherwise the pending entries (``XPENDING``, target
  ``pendingEntriesCount``, default 5), which fails while the group does not exist;
- without ``consumerGroup``, the stream's length (``XLEN``, target ``streamLength``, default 5);
- a trigger is active when its figure exceeds ``activationLagCount`` (default 0; KEDA 2.11 reads it,
  and requires it, only next to ``lagCount``); any other metadata key is not a KEDA parameter.

Then KEDA's scaling: the workload is at 0 replicas only when ``minReplicaCount`` is 0 and no trigger is
active; otherwise the HPA KEDA makes wants, for each trigger (``AverageValue`` target), ``ceil(figure /
target)`` replicas and takes the highest, clamped to ``[max(min, 1), max]``. A trigger whose query fails
is inactive and adds no metric.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

__all__ = [
    "CLUSTER_PARAMETERS",
    "PARAMETERS",
    "Query",
    "StreamFigures",
    "Trigger",
    "read_trigger",
    "replicas",
]

#: Metadata keys KEDA's redis-streams scaler reads (connection, TLS, stream, group and targets).
PARAMETERS = frozenset(
    {
        "address",
        "addressFromEnv",
        "host",
        "hostFromEnv",
        "port",
        "portFromEnv",
        "username",
        "usernameFromEnv",
        "passwordFromEnv",
        "databaseIndex",
        "enableTLS",
        "unsafeSsl",
        "stream",
        "consumerGroup",
        "pendingEntriesCount",
        "streamLength",
        "lagCount",
        "activationLagCount",
    }
)
#: Metadata keys KEDA's redis-cluster-streams scaler reads: the nodes as lists, the rest alike.
CLUSTER_PARAMETERS = (
    PARAMETERS - {"address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv"}
) | {"addresses", "addressesFromEnv", "hosts", "hostsFromEnv", "ports", "portsFromEnv"}
#: Trigger types and the metadata keys each reads.
TRIGGER_TYPES = {"redis-streams": PARAMETERS, "redis-cluster-streams": CLUSTER_PARAMETERS}
DEFAULT_TARGET = 5


class Query(Enum):
    """The Redis figure a trigger reads."""

    XLEN = "XLEN"
    XPENDING = "XPENDING"
    LAG = "XINFO GROUPS lag"


@dataclass(frozen=True)
class Trigger:
    """One trigger as KEDA reads it: the figure, its target per replica, its activation threshold."""

    query: Query
    target: int
    activation: int


@dataclass(frozen=True)
class StreamFigures:
    """What Redis answers for the request stream: XLEN, XPENDING's count and the group's lag.

    ``pending`` and ``lag`` are None while the consumer group does not exist.
    """

    xlen: int
    pending: int | None
    lag: int | None

    def read(self, query: Query) -> int | None:
        """The figure KEDA gets for ``query``; None when its query fails (XPENDING without a group)."""
        if query is Query.XLEN:
            return self.xlen
        if query is Query.XPENDING:
            return self.pending
        return self.xlen if self.lag is None else self.lag


def read_trigger(metadata: Mapping[str, str], kind: str = "redis-streams") -> Trigger:
    """Apply KEDA's trigger selection to one redis-streams (or redis-cluster-streams) trigger's metadata.

    Raises:
        ValueError: an unknown trigger type, a key KEDA does not read, no stream, or ``lagCount``
            without ``activationLagCount``.
    """
    if kind not in TRIGGER_TYPES:
        raise ValueError(f"not a Redis streams trigger of KEDA: {kind}")
    unknown = sorted(set(metadata) - TRIGGER_TYPES[kind])
    if unknown:
        raise ValueError(f"not parameters of KEDA's {kind} scaler (ignored by KEDA): {unknown}")
    if not metadata.get("stream"):
        raise ValueError("missing redis stream name")
    activation = int(metadata.get("activationLagCount", "0"))
    if metadata.get("consumerGroup"):
        lag = int(metadata.get("lagCount", "0"))
        if lag != 0:
            if "activationLagCount" not in metadata:
                raise ValueError("activationLagCount required for Redis lag (KEDA 2.11)")
            return Trigger(Query.LAG, lag, activation)
        target = int(metadata.get("pendingEntriesCount", DEFAULT_TARGET))
        return Trigger(Query.XPENDING, target, activation)
    return Trigger(Query.XLEN, int(metadata.get("streamLength", DEFAULT_TARGET)), activation)


def replicas(scaled_object_spec: Mapping[str, Any], figures: StreamFigures) -> int:
    """Replicas KEDA (and the HPA it makes) settles on for these stream figures."""
    triggers = [
        read_trigger(t["metadata"], t.get("type", "redis-streams")) for t in scaled_object_spec["triggers"]
    ]
    assert triggers, "no trigger"
    readings = [(t, figures.read(t.query)) for t in triggers]
    active = any(value is not None and value > t.activation for t, value in readings)
    low = int(scaled_object_spec.get("minReplicaCount", 0))
    high = int(scaled_object_spec.get("maxReplicaCount", 100))
    if low == 0 and not active:
        return 0
    wanted = [math.ceil(value / t.target) for t, value in readings if value is not None]
    return min(high, max(low, 1, *wanted))
