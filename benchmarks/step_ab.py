"""A/B of one denoising step between two checkouts of the engine (process CPU time, robust to other load).

    git archive <old-commit> ca2vdm_cli | tar -x -C /tmp/old
    for tree in /tmp/old . /tmp/old .; do PYTHONPATH=$tree python benchmarks/step_ab.py; done

Model: `--arch small` of `ca2vdm bench` (random weights), one thread. Prints the median over calls of a
cached 8-frame denoising step against a full 25-frame queue and of a T = 33 recompute forward (ms).
"""

import statistics
import time

import torch

from ca2vdm_cli.models.stdit.config import ModelConfig
from ca2vdm_cli.models.stdit.model import CausalSTDiT

torch.set_num_threads(1)
cfg = ModelConfig(
    latent_size=(16, 16),
    hidden_size=128,
    depth=4,
    num_heads=4,
    caption_channels=64,
    model_max_length=32,
    mask_channel=True,
)
torch.manual_seed(0)
model = CausalSTDiT(cfg).eval()
with torch.no_grad():
    for p in model.parameters():
        if not p.any():
            p.normal_(0, 0.02)
y, y_mask = torch.randn(1, 32, 64), torch.ones(1, 32)
new = hasattr(model, "plan_step")


def median_ms(fn, n: int = 25) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(n):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times) * 1e3


with torch.inference_mode():
    cache = model.new_cache(1, 25, 8) if new else model.new_cache(1, 25)
    model.write_cache(cache, torch.randn(1, 4, 33, 16, 16), y, y_mask)
    x, t = torch.randn(1, 4, 8, 16, 16), torch.full((1,), 500.0)
    result = {"denoise (raw caption)": median_ms(lambda: model.denoise(cache, x, t, y, y_mask))}
    if new:
        text = model.prepare_text(y, y_mask, 1)
        plan = model.plan_step(cache, 8, write=False)
        result["run_denoise (prepared)"] = median_ms(lambda: model.run_denoise(plan, x, t, text))
    xf = torch.randn(1, 4, 33, 16, 16)
    tf = torch.cat([torch.zeros(1, 25), torch.full((1, 8), 500.0)], 1)
    prefix = torch.zeros(1, 33)
    prefix[:, :25] = 1
    result["forward T=33"] = median_ms(lambda: model(xf, tf, y, y_mask, prefix_mask=prefix), 10)
print("new" if new else "old", {k: round(v, 1) for k, v in result.items()})
