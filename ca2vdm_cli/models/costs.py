"""FLOP accounting shared by the families' analytic formulas and the bench report (pure Python)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RunFlops:
    """FLOPs of one `sample_video` run, per AR step as a caller times it: step k = writing chunk k-1 (for
    k = 0: preparing the caption and writing the given frames) + denoising chunk k."""

    engine: str
    per_ar_step: list[int] = field(default_factory=list)
    denoise_step: int = 0  # one denoising step of the last chunk (the steady state)

    @property
    def total(self) -> int:
        return sum(self.per_ar_step)
