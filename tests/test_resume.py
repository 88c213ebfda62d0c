"""Resume sidecars: chunks round-trip exactly, a different fingerprint or a torn write is never trusted;
what a resumable run does with an existing output; the model identity in the fingerprint."""

from __future__ import annotations

import numpy as np
import torch

from ca2vdm_cli.engine.resume import Sidecar, fingerprint, inspect_output, model_identity, sidecar_dir
from ca2vdm_cli.media.video import VideoWriter


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


def test_what_a_resumable_run_does_with_each_output(tmp_path):
    """Missing → render; finished (decoded: frames and size) → skip; partial, corrupt or of another size →
    render; a sidecar with saved chunks → resume, with another fingerprint → render."""
    frames = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    out = tmp_path / "v.mp4"
    side = Sidecar(out, fingerprint({"seed": 1}))
    assert (inspect_output(out, side, 5, 32, 32).action, inspect_output(out, side, 5, 32, 32).reason) == (
        "render",
        "new",
    )
    with VideoWriter(out, 32, 32, 8) as video:
        video.write(frames)
    assert inspect_output(out, side, 5, 32, 32).action == "skip"
    assert inspect_output(out, side, 6, 32, 32).reason == f"{out} holds 5 of 6 frames"
    assert inspect_output(out, side, 5, 64, 32).reason == f"{out} is 32x32, not 64x32"
    out.write_bytes(out.read_bytes()[:200])
    state = inspect_output(out, side, 5, 32, 32)
    assert state.action == "render" and "cannot be decoded" in state.reason
    side.start()
    side.append(torch.ones(1, 4, 4, 8, 8))
    state = inspect_output(out, Sidecar(out, side.fingerprint), 5, 32, 32)
    assert (
        state.action == "resume"
        and len(state.chunks) == 1
        and torch.equal(state.chunks[0], torch.ones(1, 4, 4, 8, 8))
    )
    state = inspect_output(out, Sidecar(out, fingerprint({"seed": 2})), 5, 32, 32)
    assert state.action == "render" and "no usable chunk" in state.reason


def test_model_identity_changes_when_a_weight_file_changes(tmp_path):
    (tmp_path / "vae").mkdir()
    (tmp_path / "transformer.safetensors").write_bytes(b"a" * 10)
    (tmp_path / "vae" / "config.json").write_text("{}")
    before = model_identity(tmp_path)
    assert [name for name, _, _ in before] == ["transformer.safetensors", "vae/config.json"]
    assert model_identity(tmp_path) == before
    (tmp_path / "transformer.safetensors").write_bytes(b"b" * 11)
    assert model_identity(tmp_path) != before
