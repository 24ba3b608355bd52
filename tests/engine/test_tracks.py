"""Track descriptors: the cache of thread descriptors holds short names only."""

from __future__ import annotations

from worker.engine import tracks
from worker.engine.tracks import ThreadTrack, thread_descriptor
from worker.perfetto_pb import perfetto_trace_pb2 as pb


def _thread_name(packet: bytes) -> str:
    trace = pb.Trace()
    trace.ParseFromString(packet)
    (only,) = trace.packet
    return str(only.track_descriptor.thread.thread_name)


def test_long_thread_names_are_encoded_but_not_kept_in_the_cache() -> None:
    cache = tracks._cached_thread_descriptor
    long = ThreadTrack("s-long", 7, 8, "x" * 100_000)
    before = cache.cache_info().currsize
    assert _thread_name(thread_descriptor(long, 1)) == long.name
    assert cache.cache_info().currsize == before
    short = ThreadTrack("s-short", 9, 10, "render")
    assert _thread_name(thread_descriptor(short, 1)) == "render"
    assert thread_descriptor(short, 1) is thread_descriptor(short, 1)  # kept
