"""Conversion of causal Wan training-wrapper pickles (spec §7.3–7.4) on a tiny CausalWan: the real key
pattern (sub-dicts, `model.`, FSDP and checkpoint wrapper segments, a PEFT LoRA) converts to exactly the
plain weights; code-executing, truncated, mis-keyed and mis-shaped files are refused and leave no output."""

from __future__ import annotations

import dataclasses
import os
import re

import pytest
import torch
from safetensors.torch import load_file

from ca2vdm_cli.errors import WeightsError
from ca2vdm_cli.models.wan import CausalWan, WanConfig
from ca2vdm_cli.models.wan.convert import (
    LORA_TARGET,
    convert_checkpoint,
    expected_shapes,
    load_converted,
)

CFG = WanConfig.tiny(dim=48, ffn_dim=64, freq_dim=16, text_dim=32, text_len=8, num_heads=3, num_layers=2)


def plain_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in CausalWan(CFG).state_dict().items()}


def fsdp_key(key: str) -> str:
    """The key as an FSDP-wrapped, activation-checkpointed training wrapper saves it."""
    key = re.sub(r"^blocks\.(\d+)\.", r"blocks.\1._fsdp_wrapped_module._checkpoint_wrapped_module.", key)
    return "model._fsdp_wrapped_module." + key


def wrapper(sd: dict[str, torch.Tensor], sub_dict: str, fsdp: bool) -> dict[str, object]:
    """A Self-Forcing-like wrapper: the generator under `sub_dict`, plus a critic and counters."""
    named = {(fsdp_key(k) if fsdp else "model." + k): v for k, v in sd.items()}
    critic = {"model." + k: torch.zeros_like(v) for k, v in list(sd.items())[:3]}
    return {sub_dict: named, "critic": critic, "step": 600}


@pytest.mark.parametrize("sub_dict", ["generator_ema", "generator"])
@pytest.mark.parametrize("fsdp", [False, True])
def test_wrapper_converts_to_the_plain_weights(tmp_path, sub_dict, fsdp) -> None:
    sd = plain_state_dict()
    torch.save(wrapper(sd, sub_dict, fsdp), tmp_path / "ckpt.pt")
    out = tmp_path / "model" / "transformer.safetensors"
    report = convert_checkpoint(tmp_path / "ckpt.pt", CFG, out, sub_dict=sub_dict, dtype=torch.float32)
    got = load_file(out)
    assert set(got) == set(sd) and report.tensors == len(sd) == 15 + 27 * CFG.num_layers
    assert all(torch.equal(got[k], sd[k]) for k in sd)
    assert report.sub_dict == sub_dict and report.top_level_keys == [sub_dict, "critic", "step"]
    # the same weights as loading the plain state dict into the model
    ref = CausalWan(CFG)
    ref.load_official_state_dict({"model." + k: v for k, v in sd.items()})
    loaded = load_converted(out, CFG)
    own = loaded.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in ref.state_dict().items())


def test_default_dtype_is_bf16_and_none_takes_the_only_generator(tmp_path) -> None:
    sd = plain_state_dict()
    torch.save(wrapper(sd, "generator_ema", fsdp=True), tmp_path / "ckpt.pt")
    report = convert_checkpoint(tmp_path / "ckpt.pt", CFG, tmp_path / "m.safetensors")
    got = load_file(tmp_path / "m.safetensors")
    assert report.sub_dict == "generator_ema" and report.dtype == "bfloat16"
    assert all(torch.equal(got[k], sd[k].to(torch.bfloat16)) for k in sd)


def test_plain_state_dict_and_safetensors_sources(tmp_path) -> None:
    from safetensors.torch import save_file

    sd = plain_state_dict()
    torch.save({"model." + k: v for k, v in sd.items()}, tmp_path / "plain.pt")
    save_file(sd, str(tmp_path / "plain.safetensors"))
    for src in ("plain.pt", "plain.safetensors"):
        convert_checkpoint(tmp_path / src, CFG, tmp_path / "o.safetensors", dtype=torch.float32)
        got = load_file(tmp_path / "o.safetensors")
        assert all(torch.equal(got[k], sd[k]) for k in sd)


def peft_lora(
    sd: dict[str, torch.Tensor], rank: int, seed: int, zero_b: bool = False
) -> dict[str, torch.Tensor]:
    """PEFT-style keys (`base_model.model.`, FSDP segments, the `default` adapter) for every block Linear."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, w in sd.items():
        module = key.removesuffix(".weight")
        if not LORA_TARGET.fullmatch(module):
            continue
        a = torch.randn(rank, w.shape[1], generator=g)
        b = torch.zeros(w.shape[0], rank) if zero_b else torch.randn(w.shape[0], rank, generator=g)
        base = "base_model.model." + re.sub(r"^blocks\.(\d+)\.", r"blocks.\1._fsdp_wrapped_module.", module)
        out[f"{base}.lora_A.default.weight"] = a
        out[f"{base}.lora_B.default.weight"] = b
    return out


def test_lora_with_zero_b_converts_to_the_base(tmp_path) -> None:
    sd = plain_state_dict()
    torch.save(wrapper(sd, "generator", fsdp=True), tmp_path / "base.pt")
    lora = peft_lora(sd, rank=4, seed=1, zero_b=True)
    assert len(lora) == 2 * 10 * CFG.num_layers
    torch.save({"generator_lora": lora, "critic_lora": {}}, tmp_path / "lora.pt")
    out = tmp_path / "m.safetensors"
    report = convert_checkpoint(
        tmp_path / "base.pt", CFG, out, sub_dict="generator", lora=tmp_path / "lora.pt", dtype=torch.float32
    )
    assert report.lora_modules == 10 * CFG.num_layers and report.lora_rank == 4 and report.lora_scale == 1.0
    assert report.ignored == ["critic_lora"]
    got = load_file(out)
    assert all(torch.equal(got[k], sd[k]) for k in sd)


def test_merged_lora_equals_the_adapter_forward(tmp_path) -> None:
    sd = plain_state_dict()
    torch.save(wrapper(sd, "generator", fsdp=False), tmp_path / "base.pt")
    lora = peft_lora(sd, rank=4, seed=2)
    torch.save({"generator_lora": lora}, tmp_path / "lora.pt")
    out = tmp_path / "m.safetensors"
    convert_checkpoint(
        tmp_path / "base.pt", CFG, out, sub_dict="generator", lora=tmp_path / "lora.pt",
        lora_alpha=8.0, dtype=torch.float32,
    )  # fmt: skip
    got = load_file(out)
    x = torch.randn(5, CFG.dim)  # (N, in) for the q projections
    for i in range(CFG.num_layers):
        m = f"blocks.{i}.self_attn.q"
        a = lora[f"base_model.model.blocks.{i}._fsdp_wrapped_module.self_attn.q.lora_A.default.weight"]
        b = lora[f"base_model.model.blocks.{i}._fsdp_wrapped_module.self_attn.q.lora_B.default.weight"]
        adapter = x @ sd[m + ".weight"].T + 2.0 * (x @ a.T) @ b.T  # PEFT: base(x) + (α/r)·B(A(x)), α/r = 2
        merged = x @ got[m + ".weight"].T
        torch.testing.assert_close(merged, adapter, rtol=1e-5, atol=1e-5)
        assert torch.equal(got[m + ".bias"], sd[m + ".bias"])
    untouched = [k for k in sd if not LORA_TARGET.fullmatch(k.removesuffix(".weight"))]
    assert all(torch.equal(got[k], sd[k]) for k in untouched)


class Payload:
    """Pickles as a call to os.system; unpickling it without weights_only would run the command."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_payload_is_refused_and_never_runs(tmp_path) -> None:
    marker = tmp_path / "payload-ran"
    sd = {"model." + k: v for k, v in plain_state_dict().items()}
    torch.save({"generator": sd, "extra": Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match=r"would run code \(posix\.system\)|would run code"):
        convert_checkpoint(tmp_path / "evil.pt", CFG, tmp_path / "m.safetensors", sub_dict="generator")
    assert not marker.exists()
    assert not (tmp_path / "m.safetensors").exists()


def test_truncated_file_is_refused(tmp_path) -> None:
    torch.save(wrapper(plain_state_dict(), "generator", fsdp=False), tmp_path / "ckpt.pt")
    data = (tmp_path / "ckpt.pt").read_bytes()
    (tmp_path / "ckpt.pt").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(WeightsError, match="truncated or corrupt.*download it again"):
        convert_checkpoint(tmp_path / "ckpt.pt", CFG, tmp_path / "m.safetensors", sub_dict="generator")
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def _expect_refusal(tmp_path, sd, match: str, sub_dict: str = "generator") -> None:
    """Conversion fails with `match`, and a previous output file is left untouched."""
    torch.save(wrapper(sd, "generator", fsdp=True), tmp_path / "ckpt.pt")
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"previous")
    with pytest.raises(WeightsError, match=match):
        convert_checkpoint(tmp_path / "ckpt.pt", CFG, out, sub_dict=sub_dict)
    assert out.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt", "m.safetensors"]


def test_missing_key_is_named(tmp_path) -> None:
    sd = plain_state_dict()
    del sd["blocks.1.ffn.2.weight"]
    _expect_refusal(tmp_path, sd, r"1 missing keys: blocks\.1\.ffn\.2\.weight \(likely cause: an incomplete")


def test_another_block_count_is_named(tmp_path) -> None:
    torch.manual_seed(0)
    deeper = CausalWan(dataclasses.replace(CFG, num_layers=3)).state_dict()
    _expect_refusal(tmp_path, deeper, r"27 unexpected keys: blocks\.2\..*another number of blocks .* \(2\)")


def test_wrong_shape_is_named(tmp_path) -> None:
    sd = plain_state_dict()
    sd["head.head.weight"] = torch.zeros(3, CFG.dim)
    _expect_refusal(tmp_path, sd, r"wrong shapes: head\.head\.weight \(3, 48\) != \(64, 48\).*WanConfig")


def test_wrong_sub_dict_lists_the_top_level_keys(tmp_path) -> None:
    found = r"top-level keys: generator \(69 tensors\), critic \(3 tensors\), step \(int\)"
    _expect_refusal(tmp_path, plain_state_dict(), "no sub-dict 'generator_ema'; " + found, "generator_ema")


def test_two_generators_need_a_name(tmp_path) -> None:
    sd = {"model." + k: v for k, v in plain_state_dict().items()}
    torch.save({"generator": sd, "generator_ema": sd}, tmp_path / "ckpt.pt")
    with pytest.raises(WeightsError, match="both generator_ema and generator.*name the sub-dict"):
        convert_checkpoint(tmp_path / "ckpt.pt", CFG, tmp_path / "m.safetensors")


def test_unknown_prefix_and_diffusers_layout_are_refused(tmp_path) -> None:
    sd = plain_state_dict()
    torch.save({"generator": {"net." + k: v for k, v in sd.items()}}, tmp_path / "a.pt")
    with pytest.raises(WeightsError, match=r"unknown prefix .*net\.blocks\.0"):
        convert_checkpoint(tmp_path / "a.pt", CFG, tmp_path / "m.safetensors", sub_dict="generator")
    torch.save({"condition_embedder.time_proj.weight": torch.zeros(1)}, tmp_path / "b.pt")
    with pytest.raises(WeightsError, match="diffusers WanTransformer3DModel layout"):
        convert_checkpoint(tmp_path / "b.pt", CFG, tmp_path / "m.safetensors")


def test_bad_lora_is_refused(tmp_path) -> None:
    sd = plain_state_dict()
    torch.save(wrapper(sd, "generator", fsdp=False), tmp_path / "base.pt")
    lora = peft_lora(sd, rank=4, seed=1)
    first = next(iter(lora))
    for broken, match in (
        ({k: v for k, v in lora.items() if k != first}, r"1 missing: blocks\.0\.\S+\.lora_A\.weight"),
        ({**lora, first: torch.zeros(4, 7)}, r"mis-shaped factors: blocks\.0\..* A \(4, 7\)"),
        ({**lora, "base_model.model.head.head.lora_A.weight": torch.zeros(4, 48)}, "not of the form"),
    ):
        torch.save({"generator_lora": broken}, tmp_path / "lora.pt")
        with pytest.raises(WeightsError, match=match):
            convert_checkpoint(
                tmp_path / "base.pt", CFG, tmp_path / "m.safetensors", sub_dict="generator",
                lora=tmp_path / "lora.pt",
            )  # fmt: skip
        assert not (tmp_path / "m.safetensors").exists()


def test_full_size_layout_has_825_tensors() -> None:
    shapes = expected_shapes(WanConfig.wan_1_3b())  # meta device: nothing allocated
    assert len(shapes) == 825
    assert sum(s.numel() for s in shapes.values()) == 1_418_996_800
    assert sum(1 for k in shapes if LORA_TARGET.fullmatch(k.removesuffix(".weight"))) == 300


def test_legacy_pickle_is_read_safely_without_mmap(tmp_path) -> None:
    sd = plain_state_dict()
    torch.save(
        wrapper(sd, "generator", fsdp=False), tmp_path / "old.pt", _use_new_zipfile_serialization=False
    )
    convert_checkpoint(
        tmp_path / "old.pt", CFG, tmp_path / "m.safetensors", sub_dict="generator", dtype=torch.float32
    )
    got = load_file(tmp_path / "m.safetensors")
    assert all(torch.equal(got[k], sd[k]) for k in sd)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint" * 8)
    with pytest.raises(WeightsError, match="junk.pt is not a readable PyTorch checkpoint"):
        convert_checkpoint(tmp_path / "junk.pt", CFG, tmp_path / "j.safetensors")


def test_lora_is_merged_in_float32_then_cast(tmp_path) -> None:
    sd = plain_state_dict()
    torch.save(wrapper(sd, "generator", fsdp=False), tmp_path / "base.pt")
    lora = peft_lora(sd, rank=4, seed=3)
    torch.save({"generator_lora": lora}, tmp_path / "lora.pt")
    out = tmp_path / "m.safetensors"
    convert_checkpoint(tmp_path / "base.pt", CFG, out, sub_dict="generator", lora=tmp_path / "lora.pt")
    got = load_file(out)  # bf16
    a = lora["base_model.model.blocks.1._fsdp_wrapped_module.ffn.2.lora_A.default.weight"]
    b = lora["base_model.model.blocks.1._fsdp_wrapped_module.ffn.2.lora_B.default.weight"]
    want = (sd["blocks.1.ffn.2.weight"] + b @ a).to(torch.bfloat16)
    assert got["blocks.1.ffn.2.weight"].dtype == torch.bfloat16
    assert torch.equal(got["blocks.1.ffn.2.weight"], want)
