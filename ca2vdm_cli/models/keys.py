"""Strict state-dict checks shared by the model families: which keys are missing, unexpected or of the
wrong shape, said in one message with the first ten of each and the likely cause."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor


def key_mismatch(
    got: Mapping[str, Tensor], expected: Mapping[str, torch.Size]
) -> tuple[list[str], list[str], list[str]]:
    """Sorted missing, unexpected and wrongly shaped keys of `got` against `expected` shapes."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(got) & set(expected) if tuple(got[k].shape) != tuple(expected[k]))
    return missing, unexpected, wrong


def describe_key_mismatch(
    missing: list[str],
    unexpected: list[str],
    wrong: list[str],
    got: Mapping[str, Tensor],
    expected: Mapping[str, torch.Size],
    hint: Callable[[list[str], list[str], list[str]], str],
) -> str:
    """One message listing (the first 10 of) missing, unexpected and wrongly shaped keys, with
    `hint(missing, unexpected, wrong)` as the likely cause."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {', '.join(missing[:10])}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {', '.join(unexpected[:10])}")
    if wrong:
        shapes = [f"{k} {tuple(got[k].shape)} != {tuple(expected[k])}" for k in wrong[:10]]
        parts.append(f"{len(wrong)} keys with wrong shapes: {', '.join(shapes)}")
    cause = hint(missing, unexpected, wrong)
    return "checkpoint does not fit the architecture: " + "; ".join(parts) + f" (likely cause: {cause})"
