"""A private Redis Cluster: three redis-server masters on free loopback ports, no replicas.

Built from :class:`tests.support.redis_server.RedisServer` (each node is one, with
``--cluster-enabled yes``) and joined with ``redis-cli --cluster create ... --cluster-replicas 0
--cluster-yes``, the way an operator makes one. :meth:`RedisCluster.close` kills every node and
removes its folder; a master can be stopped and started again on its port and folder (its
``nodes.conf`` and, with ``persistence``, its AOF survive), which is what a restarted master looks
like to clients. Never touches a Redis the machine happens to run.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

from redis import Redis
from redis.crc import key_slot

from tests.support.redis_server import RedisServer

__all__ = ["RedisCluster", "free_cluster_port"]

#: Redis Cluster's bus listens on the client port + this.
BUS_OFFSET = 10_000


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_port(taken: set[int] | None = None) -> int:
    """A free loopback port whose cluster-bus port (+10000) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port + BUS_OFFSET <= 65_535 and port not in (taken or set()) and _free(port + BUS_OFFSET):
            return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisCluster:
    """Three masters covering all 16384 slots. Start with :meth:`start`; :attr:`url` names the first.

    Args:
        masters: how many masters (3 by default, the smallest cluster ``redis-cli`` creates).
        persistence: AOF on every node (``appendfsync always``), so a restarted master keeps its data.
        node_timeout_ms: ``cluster-node-timeout``: how long a silent master takes to be marked failed.
    """

    def __init__(self, *, masters: int = 3, persistence: bool = False, node_timeout_ms: int = 2000) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli not found on PATH; run scripts/dev setup")
        self.cli = cli
        ports: set[int] = set()
        for _ in range(masters):
            ports.add(free_cluster_port(ports))
        args = (
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms),
            "--cluster-require-full-coverage", "yes",
        )  # fmt: skip
        self.nodes = [RedisServer(persistence=persistence, port=p, extra_args=args) for p in sorted(ports)]

    @property
    def url(self) -> str:
        """``redis://`` URL of the first node (any node serves as a cluster client's entry point)."""
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def start(self, timeout: float = 120.0) -> RedisCluster:
        """Start the nodes, join them with ``redis-cli --cluster create``, wait for ``cluster_state:ok``.

        Raises:
            RuntimeError: a node or ``redis-cli`` failed, or the cluster was not ok in time (every
                node is stopped then; nothing leaks).
        """
        try:
            for node in self.nodes:
                node.start(timeout=timeout)
            addresses = [f"127.0.0.1:{p}" for p in self.ports]
            done = subprocess.run(
                [self.cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True,
                timeout=timeout,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(
                    f"redis-cli --cluster create failed: {done.stdout[-2000:]!r} {done.stderr!r}"
                )
            self.wait_ok(timeout)
            return self
        except BaseException:
            self.close()
            raise

    def wait_ok(self, timeout: float = 120.0) -> None:
        """Wait until every running node says ``cluster_state:ok`` and knows every other node."""
        deadline = time.monotonic() + timeout
        while True:
            if all(self._ok(node) for node in self.nodes):
                return
            if time.monotonic() > deadline:
                states = {n.port: self._info(n) for n in self.nodes}
                raise RuntimeError(f"cluster not ok within {timeout}s: {states}")
            time.sleep(0.05)  # polling a readiness condition, not synchronising a test

    def _info(self, node: RedisServer) -> str:
        try:
            with Redis(port=node.port, socket_timeout=2) as r:
                info: str = r.execute_command("CLUSTER", "INFO").decode()
                return info
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"

    def state(self, node: RedisServer) -> str:
        """``cluster_state`` as ``node`` sees it (``ok``, ``fail``), or the error asking it."""
        info = self._info(node)
        for line in info.splitlines():
            if line.startswith("cluster_state:"):
                return line.split(":", 1)[1].strip()
        return info

    def _ok(self, node: RedisServer) -> bool:
        info = self._info(node)
        known = f"cluster_known_nodes:{len(self.nodes)}"
        return "cluster_state:ok" in info and known in info

    def node_of(self, key: str | bytes) -> RedisServer:
        """The master serving ``key``'s slot (asked of the first running node: CLUSTER SLOTS)."""
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        for node in self.nodes:
            if node.proc is None:
                continue
            with Redis(port=node.port, socket_timeout=5) as r:
                ranges: list[list[object]] = r.execute_command("CLUSTER", "SLOTS")
            for row in ranges:
                first, last, master = int(str(row[0])), int(str(row[1])), row[2]
                if first <= slot <= last:
                    port = int(str(master[1]))  # type: ignore[index]
                    return next(n for n in self.nodes if n.port == port)
        raise RuntimeError(f"no running node knows slot {slot}")

    def restart(self, node: RedisServer, timeout: float = 120.0) -> None:
        """SIGKILL one master and start it again on its port and folder; wait for ``cluster_state:ok``."""
        node.stop()
        node.start(timeout=timeout)
        self.wait_ok(timeout)

    def close(self) -> None:
        """Kill every node and remove its folder."""
        for node in self.nodes:
            node.close()
