"""Flow-matching few-step sampler: warped steps, σ lookup, x0 conversion and the re-noise step."""

from __future__ import annotations

import pytest
import torch

from ca2vdm_cli.errors import ConfigError
from ca2vdm_cli.sampling.flow import (
    CAUSVID,
    SELF_FORCING,
    FlowSchedule,
    flow_to_x0,
    renoise,
    sample_block,
    schedule_timesteps,
    sigma_at,
)  # fmt: skip


def test_self_forcing_warped_timesteps() -> None:
    ts = SELF_FORCING.timesteps()
    assert ts[0] == 1000.0 and ts[1] == 937.5 and ts[3] == 625.0
    assert ts[2] == pytest.approx(2500 / 3, abs=1e-4) and ts[2] != round(ts[2])
    assert SELF_FORCING.sigmas() == pytest.approx([1.0, 0.9375, 5 / 6, 0.625], abs=1e-6)
    assert FlowSchedule((1000, 500), 5.0, True).timesteps() == pytest.approx([1000.0, 2500 / 3], abs=1e-4)


def test_causvid_unwarped() -> None:
    assert CAUSVID.timesteps() == [1000.0, 757.0, 522.0]
    assert CAUSVID.sigmas() == pytest.approx([1.0, 0.75676, 0.52174], abs=1e-5)


def test_schedule_and_t0() -> None:
    table = schedule_timesteps(5.0)
    assert table.dtype == torch.float32 and table.shape == (1000,) and table[0] == 1000.0
    assert float(sigma_at(torch.tensor(0.0), 5.0)) == pytest.approx(0.00498, abs=1e-5)
    assert float(sigma_at(torch.tensor(0.0), 8.0)) == pytest.approx(0.00794, abs=1e-5)


def test_x0_and_renoise_closed_form() -> None:
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 3, 2, 2, generator=g)
    eps = torch.randn(2, 4, 3, 2, 2, generator=g)
    sigma = torch.tensor([[0.9, 0.5, 0.1], [1.0, 0.25, 0.625]])  # per frame
    xt = renoise(x0, eps, sigma)
    s = sigma[:, None, :, None, None]
    torch.testing.assert_close(xt, (1 - s) * x0 + s * eps)
    rec = flow_to_x0(xt, eps - x0, sigma)  # the exact flow gives x0 back
    torch.testing.assert_close(rec, x0, atol=1e-6, rtol=0)
    exp = (xt.double() - s.double() * (eps - x0).double()).float()
    assert torch.equal(rec, exp)


def test_sample_block_with_oracle_flow() -> None:
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(1, 4, 3, 2, 2, generator=g)
    noise = torch.randn(1, 4, 3, 2, 2, generator=g)
    calls = []

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(float(t[0, 0]))
        sig = sigma_at(t, 5.0)[:, None, :, None, None]
        return (x - x0) / sig  # the v that makes x0 exact

    out = sample_block(predict, noise, SELF_FORCING, lambda j: torch.randn(1, 4, 3, 2, 2, generator=g))
    assert calls == SELF_FORCING.timesteps()
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


def test_bad_schedules() -> None:
    with pytest.raises(ConfigError):
        FlowSchedule((), 5.0, True)
    with pytest.raises(ConfigError):
        FlowSchedule((1000, 0), 5.0, True)
