"""The generated classes in worker/perfetto_pb match protos/ (regenerated with `scripts/dev protos`)."""

from __future__ import annotations

from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

from worker.perfetto_pb import pb

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_matches_the_protos(tmp_path: Path) -> None:
    status = protoc.main(
        [
            "protoc",
            f"-I{ROOT / 'protos'}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            str(ROOT / "protos" / "perfetto_trace.proto"),
        ]
    )
    assert status == 0
    for name in ("perfetto_trace_pb2.py", "perfetto_trace_pb2.pyi"):
        committed = (ROOT / "worker" / "perfetto_pb" / name).read_text()
        assert (tmp_path / name).read_text() == committed, f"{name} is stale: run scripts/dev protos"


def test_protos_are_proto2_unpacked_with_upstream_numbers() -> None:
    text = (ROOT / "protos" / "perfetto_trace.proto").read_text()
    assert 'syntax = "proto2";' in text
    assert "packed" not in text.replace("never packed", "").replace("is packed", "")
    assert "Licensed under the Apache License, Version 2.0" in text
    assert "MODIFIED FROM UPSTREAM" in text
    assert (ROOT / "protos" / "LICENSE").read_text().count("Apache License") >= 2
    fields = pb.TracePacket.DESCRIPTOR.fields_by_name
    assert fields["track_event"].number == 11
    assert fields["trusted_packet_sequence_id"].number == 10
    assert fields["first_packet_on_sequence"].number == 87
    te = pb.TrackEvent.DESCRIPTOR.fields_by_name
    numbers = (te["category_iids"].number, te["source_location_iid"].number, te["flow_ids"].number)
    assert numbers == (3, 34, 47)
    assert not te["category_iids"].is_packed
    assert pb.TrackDescriptor.DESCRIPTOR.fields_by_name["parent_uuid"].number == 5
