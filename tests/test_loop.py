"""The AR loop (`engine.loop.sample_chunks`) against a mock denoiser and sampler that record every call:
what any model family gets from the loop, independent of CausalSTDiT. A new family's tests can reuse
`RecordingDenoiser` and `RecordingSampler`."""

from __future__ import annotations

import torch

from ca2vdm_cli.engine.loop import chunk_lengths, sample_chunks


class RecordingDenoiser:
    """Keeps the clean past as a list of frames (a bounded FIFO of `capacity`) and logs every call; its
    prediction depends on the whole past, so a wrong past shows in the outputs."""

    def __init__(self, capacity: int = 1000) -> None:
        self.capacity = capacity
        self.calls: list[tuple] = []
        self.past: list[torch.Tensor] = []  # frames (rows, c, h, w), oldest first
        self.frame_ids: list[int] = []  # absolute index of each frame in `past`
        self.written = 0
        self.condition = None

    def reset(self, condition=None) -> None:
        self.calls.append(("reset", condition))
        self.past, self.frame_ids, self.written, self.condition = [], [], 0, condition

    def write(self, clean: torch.Tensor) -> None:
        self.calls.append(("write", clean.shape[2], self.written))
        for f in range(clean.shape[2]):
            self.past.append(clean[:, :, f].clone())
            self.frame_ids.append(self.written)
            self.written += 1
        while len(self.past) > self.capacity:  # evict the oldest
            self.past.pop(0)
            self.frame_ids.pop(0)

    def predict(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls.append(("predict", x.shape[2], self.written, tuple(self.frame_ids), float(t[0])))
        context = (
            torch.stack(self.past, 2).mean(2, keepdim=True) if self.past else torch.zeros_like(x[:, :, :1])
        )
        return 0.5 * x + context


class RecordingSampler:
    num_steps = 3
    stochastic = True
    perturbs = True

    def __init__(self) -> None:
        self.perturbed: list[torch.Tensor] = []

    def timesteps(self) -> list[float]:
        return [900.0, 500.0, 100.0]

    def step(self, out, x, n, noise):
        return x - 0.3 * out + (0.01 * noise if n < self.num_steps - 1 else 0)

    def perturb(self, clean, noise):
        self.perturbed.append(clean)
        return clean + 0.05 * noise


def run(denoiser, frames=10, chunk=4, seeds=(0,), prefix_frames=1, replay=(), guidance=None, condition="cap"):
    lengths = chunk_lengths(frames, chunk)
    prefix = None
    if prefix_frames:
        gen = torch.Generator().manual_seed(7)
        prefix = torch.randn(len(seeds), 2, prefix_frames, 3, 3, generator=gen)
    out = sample_chunks(
        denoiser,
        RecordingSampler(),
        lengths=lengths,
        latent_shape=(2, 3, 3),
        seeds=list(seeds),
        device=torch.device("cpu"),
        condition=condition,
        prefix=prefix,
        guidance=guidance,
        replay=replay,
    )
    return list(out)


def test_one_write_per_chunk_and_the_past_is_read_only_during_a_chunk():
    d = RecordingDenoiser()
    chunks = run(d, frames=10, chunk=4)
    assert [c.shape[2] for c in chunks] == [4, 4, 2]
    kinds = [c[0] for c in d.calls]
    # reset, the given frame, then per chunk: 3 predicts and (except after the last) one write
    assert (
        kinds
        == ["reset", "write"] + ["predict"] * 3 + ["write"] + ["predict"] * 3 + ["write"] + ["predict"] * 3
    )
    assert d.calls[0] == ("reset", "cap")
    writes = [c for c in d.calls if c[0] == "write"]
    assert [(n, start) for _, n, start in writes] == [(1, 0), (4, 1), (4, 5)]  # frames in order, once each
    predicts = [c for c in d.calls if c[0] == "predict"]
    for k in range(3):  # every step of chunk k sees the same past
        seen = {(p[2], p[3]) for p in predicts[3 * k : 3 * k + 3]}
        assert len(seen) == 1
    assert [p[4] for p in predicts[:3]] == [900.0, 500.0, 100.0]


def test_the_past_holds_perturbed_latents_but_the_output_is_clean():
    d = RecordingDenoiser()
    chunks = run(d, frames=8, chunk=4)
    # the second write holds chunk 0, perturbed: close to it, not equal
    written = torch.stack(d.past[1:5], 2)
    assert not torch.equal(written, chunks[0]) and (written - chunks[0]).abs().max() < 0.5


def test_eviction_keeps_the_newest_frames_in_order():
    d = RecordingDenoiser(capacity=5)
    run(d, frames=12, chunk=4)
    predicts = [c for c in d.calls if c[0] == "predict"]
    assert predicts[-1][3] == (4, 5, 6, 7, 8)  # 1 given + 8 written; the oldest four were evicted first


def test_replayed_chunks_are_written_not_yielded_and_the_rest_is_unchanged():
    full = run(RecordingDenoiser(), frames=12, chunk=4)
    d = RecordingDenoiser()
    resumed = run(d, frames=12, chunk=4, replay=full[:2])
    assert len(resumed) == 1 and torch.equal(resumed[0], full[2])
    assert sum(c[0] == "predict" for c in d.calls) == 3  # only the last chunk was denoised


def test_noise_is_keyed_by_seed_and_chunk_not_by_the_batch():
    alone = run(RecordingDenoiser(), frames=8, chunk=4, seeds=(5,), prefix_frames=0)
    batch = run(RecordingDenoiser(), frames=8, chunk=4, seeds=(3, 5), prefix_frames=0)
    assert all(torch.equal(a[0], b[1]) for a, b in zip(alone, batch, strict=True))
    assert not torch.equal(batch[0][0], batch[0][1])  # another seed, another video


def test_guidance_runs_the_denoiser_on_doubled_rows():
    d = RecordingDenoiser()
    folded = []

    def guidance(out):
        folded.append(out.shape[0])
        return out[out.shape[0] // 2 :]

    chunks = run(d, frames=4, chunk=4, seeds=(0, 1), prefix_frames=0, guidance=guidance)
    assert chunks[0].shape[0] == 2 and set(folded) == {4}
