"""Resume sidecars: chunks round-trip exactly, a different fingerprint or a torn write is never trusted."""

from __future__ import annotations

import torch

from ca2vdm_cli.resume import Sidecar, fingerprint, sidecar_dir


def test_chunks_round_trip_and_removal(tmp_path):
    out = tmp_path / "v.mp4"
    fp = fingerprint({"prompt": "a", "seed": 1})
    side = Sidecar(out, fp)
    side.start()
    chunks = [torch.randn(1, 4, 8, 4, 4), torch.randn(1, 4, 8, 4, 4)]
    for c in chunks:
        side.append(c)
    again = Sidecar(out, fp).load()
    assert len(again) == 2 and all(torch.equal(a, b) for a, b in zip(chunks, again, strict=True))
    side.remove()
    assert not sidecar_dir(out).exists() and Sidecar(out, fp).load() == []


def test_other_settings_never_reuse_a_sidecar(tmp_path):
    out = tmp_path / "v.mp4"
    side = Sidecar(out, fingerprint({"seed": 1}))
    side.start()
    side.append(torch.zeros(1, 4, 2, 2, 2))
    assert Sidecar(out, fingerprint({"seed": 2})).load() == []
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})


def test_a_torn_chunk_stops_the_replay_there(tmp_path):
    out = tmp_path / "v.mp4"
    fp = fingerprint({})
    side = Sidecar(out, fp)
    side.start()
    for _ in range(3):
        side.append(torch.ones(1, 4, 2, 2, 2))
    (sidecar_dir(out) / "chunk-00001.safetensors").write_bytes(b"garbage")
    assert len(Sidecar(out, fp).load()) == 1
