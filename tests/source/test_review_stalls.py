"""Review of the close/stall changes: ``aclose`` on a stalled service is bounded by about the batch
timeout also when a connection was still being opened (the ADBC driver's connection open talks to
the server and waits ~20 s, gRPC's connect deadline, when the server does not answer), and the
source serves again once the service answers."""

from __future__ import annotations

import time

import pytest

from tests.support.chaos import ChaosProxy
from tests.support.devserver import start_devserver
from worker.devserver import Lake, LakeConfig
from worker.errors import SourceBroken
from worker.source import FlightSqlConfig, FlightSqlSource


@pytest.fixture(scope="module")
def lake() -> Lake:
    return Lake(LakeConfig(seed=11, processes=("small",)))


@pytest.mark.timeout(60, method="thread")
@pytest.mark.parametrize("tickets", ["off", "auto"])
async def test_aclose_is_bounded_when_a_connection_open_stalled(lake: Lake, tickets: str) -> None:
    p = lake.processes[0]
    with start_devserver(lake) as server, ChaosProxy(("127.0.0.1", server.port)) as proxy:
        url = f"grpc://127.0.0.1:{proxy.port}"
        source = FlightSqlSource(FlightSqlConfig(url, batch_timeout_s=0.5, direct_tickets=tickets))  # type: ignore[arg-type]
        try:
            proxy.set_mode("mute")  # the server gets the calls, its answers are held
            # The first query opens a connection (over ADBC in both modes): the open stalls.
            with pytest.raises(SourceBroken, match=r"sent nothing for 0\.5 s"):
                await source.process(p.process_id)
        finally:
            started = time.monotonic()
            await source.aclose()
            closed_in = time.monotonic() - started
        assert proxy.mode == "mute"
    assert closed_in < 5, f"aclose took {closed_in:.1f} s on a stalled service (batch timeout 0.5 s)"


@pytest.mark.timeout(60, method="thread")
async def test_a_stalled_open_does_not_hold_later_queries(lake: Lake) -> None:
    """Opens that stalled must not take the read threads from the queries sent once the service
    answers again."""
    p = lake.processes[0]
    with start_devserver(lake) as server, ChaosProxy(("127.0.0.1", server.port)) as proxy:
        url = f"grpc://127.0.0.1:{proxy.port}"
        source = FlightSqlSource(FlightSqlConfig(url, batch_timeout_s=0.5, direct_tickets="off"))
        try:
            await source.process(p.process_id)
            proxy.set_mode("mute")
            for _ in range(20):  # each one abandons a connection being opened
                with pytest.raises(SourceBroken):
                    await source.process(p.process_id)
            proxy.set_mode("pass")
            assert (await source.process(p.process_id)).exe == p.exe
        finally:
            started = time.monotonic()
            await source.aclose()
            closed_in = time.monotonic() - started
    assert closed_in < 5
