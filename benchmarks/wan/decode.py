"""Streaming vs whole-clip decode of the Wan VAE on a downloaded model directory (CUDA): the same 21
latent frames (81 video frames) decoded at once and block by block (3 latent frames, as generation yields
them); time, peak memory and the largest difference. Usage: python benchmarks/wan/decode.py MODEL OUT.json
"""

from __future__ import annotations

import json
import sys
import time

import torch

from ca2vdm_cli.engine.noise import seeded_noise
from ca2vdm_cli.models.wan.vae import WanVAE
from ca2vdm_cli.store.card import read_card
from ca2vdm_cli.store.weights import resolve_model


def timed(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - start, torch.cuda.max_memory_allocated()


def main(model: str, out: str) -> None:
    from diffusers import AutoencoderKLWan

    directory = resolve_model(model)
    card = read_card(directory)
    vae = AutoencoderKLWan.from_pretrained(str(directory / "vae"), torch_dtype=torch.bfloat16)
    wan = WanVAE(vae.to("cuda").eval())
    h, w = card.latent_size
    z = seeded_noise([0], "decode-bench", 0, (16, 21, h, w)).to("cuda")  # (1, 16, 21, h, w)
    whole, whole_s, whole_peak = timed(lambda: wan.decode(z))

    def streamed():
        stream = wan.stream()
        return torch.cat([stream.decode(z[:, :, i : i + 3]) for i in range(0, 21, 3)], dim=2)

    parts, stream_s, stream_peak = timed(streamed)
    result = {
        "model": card.name,
        "latent_frames": 21,
        "video_frames": int(parts.shape[2]),
        "whole_s": whole_s,
        "stream_s": stream_s,
        "whole_peak_bytes": whole_peak,
        "stream_peak_bytes": stream_peak,
        "max_abs_diff": float((whole.float().clamp(-1, 1) - parts.float()).abs().max()),
        "device": torch.cuda.get_device_name(),
    }
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
