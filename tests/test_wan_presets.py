"""Downloadable causal Wan presets against the loopback fake Hub, with tiny real components: a synthetic
training-wrapper pickle with the real key pattern for a tiny WanConfig, a tiny AutoencoderKLWan folder and a
tiny UMT5 folder + tokenizer. First-download pinning (commit, sizes, sha256s recorded and trusted alone),
an interrupted download resumed, conversion equal to the plain weights, the LongLive LoRA merge, one-line
errors leaving nothing half-built, and the shipped cards as `ca2vdm models` shows them."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file

from ca2vdm_cli.errors import DownloadError, WeightsError
from ca2vdm_cli.models.wan import CausalWan
from ca2vdm_cli.store.card import read_card
from ca2vdm_cli.store.pins import Lock, cache_status
from ca2vdm_cli.store.weights import resolve_model
from tests.factories import tiny_wan_config
from tests.fakehub import FakeHub, FakeRepo
from tests.test_wan_convert import wrapper
from tests.test_wan_text import tiny_tokenizer, tiny_umt5

CFG = tiny_wan_config()
SHA = {"sf": "a" * 40, "wan": "b" * 40, "ll": "c" * 40}
CKPT, BASE, LORA = "checkpoints/self_forcing_dmd.pt", "models/longlive_base.pt", "models/lora.pt"
LORA_TARGET = re.compile(r"blocks\.\d+\.(self_attn\.[qkvo]|cross_attn\.[qkvo]|ffn\.[02])")


def plain(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: torch.randn_like(v) * 0.05 for k, v in CausalWan(CFG).state_dict().items()}


def pickled(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def folder(tmp_path, name: str, save) -> dict[str, bytes]:
    save(str(tmp_path / name))
    return {f"{name}/{p.name}": p.read_bytes() for p in sorted((tmp_path / name).iterdir())}


@pytest.fixture(scope="module")
def wan_files(tmp_path_factory) -> dict[str, bytes]:
    """The Wan2.1 diffusers repo's parts, tiny: vae/, text_encoder/, tokenizer/."""
    from diffusers import AutoencoderKLWan

    tmp = tmp_path_factory.mktemp("wan")
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1)
    files = folder(tmp, "vae", vae.save_pretrained)
    files |= folder(tmp, "text_encoder", tiny_umt5(CFG.text_dim).save_pretrained)
    return files | folder(tmp, "tokenizer", tiny_tokenizer().save_pretrained)


def file_entries(files: dict[str, bytes], prefix: str) -> list[dict]:
    return [
        {"path": p, "size": None, "approx_size": len(b), "sha256": None}
        for p, b in files.items()
        if p.startswith(prefix)
    ]


def card_dict(wan_files, name="fake-sf", repo="fake-org/self-forcing", **transformer) -> dict:
    parts = {
        role: {
            "repo": "fake-org/wan-diffusers",
            "revision": None,
            "files": file_entries(wan_files, prefix),
            "license": "Apache-2.0",
        }
        for role, prefix in (("vae", "vae/"), ("text_encoder", "text_encoder/"), ("tokenizer", "tokenizer/"))
    }
    trans = {
        "repo": repo,
        "revision": None,
        "files": [{"path": CKPT, "approx_size": 1000}],
        "format": "wan-wrapper",
        "sub_dict": "generator_ema",
        "license": "Apache-2.0",
    } | transformer
    sampling = dict(timesteps=[1000, 750, 500, 250], shift=5.0, warp=True, chunk=2, max_frames=16)
    return {
        "name": name,
        "family": "wan",
        "model": CFG.to_dict(),
        "sampling": sampling,
        "video": {"fps": 16, "height": 32, "width": 32},
        "vae": {"kind": "wan", "scaling_factor": 1.0, "downsample": 8},
        "text": {"max_length": CFG.text_len, "tokenizer": "files", "encoder": "umt5"},
        "text_to_video": True,
        "accepts_images": False,
        "sources": {"transformer": trans, **parts},
    }


def tiny_repos(wan_files, sd) -> dict[str, FakeRepo]:
    lfs = {p for p in wan_files if "safetensors" in p}
    ckpt = {CKPT: pickled(wrapper(sd, "generator_ema", True))}
    return {
        "fake-org/self-forcing": FakeRepo(SHA["sf"], ckpt, {CKPT}),
        "fake-org/wan-diffusers": FakeRepo(SHA["wan"], dict(wan_files), lfs),
    }


@pytest.fixture
def hub(monkeypatch, wan_files):
    from huggingface_hub import constants

    sd = plain()
    server = FakeHub(tiny_repos(wan_files, sd)).start(ttl=120)
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_PROGRESS_BARS", True)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    server.sd = sd  # type: ignore[attr-defined]
    yield server
    server.stop()


def write(tmp_path, d: dict):
    path = tmp_path / f"{d['name']}.json"
    path.write_text(json.dumps(d))
    return path


def bf16(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(torch.bfloat16) for k, v in sd.items()}


def gets(hub: FakeHub, fragment: str) -> list[str]:
    return [r for r in hub.requests if r.startswith("GET") and fragment in r]


# ----------------------------------------------------------------------------- first download
def test_first_download_pins_resumes_verifies_and_converts(hub, wan_files, tmp_path, caplog):
    from diffusers import AutoencoderKLWan
    from transformers import AutoTokenizer, UMT5EncoderModel

    card, cache = write(tmp_path, card_dict(wan_files)), tmp_path / "c"
    hub.faults[CKPT] = "drop-once"  # the connection drops half-way; the download resumes
    with pytest.raises(DownloadError, match="not downloaded yet .* run `ca2vdm download fake-sf`"):
        resolve_model(str(card), cache_dir=cache)  # no consent: nothing is asked of the Hub
    assert hub.requests == []
    caplog.set_level("INFO", logger="ca2vdm_cli")
    directory = resolve_model(str(card), cache_dir=cache, consent=lambda m: True)

    assert f"pinned fake-sf to fake-org/self-forcing@{SHA['sf']} on first download" in caplog.text
    assert "first conversion of fake-org/self-forcing/" in caplog.text and "generator_ema" in caplog.text
    assert CKPT not in hub.faults and len(gets(hub, CKPT)) == 2  # dropped once, then resumed
    assert not gets(hub, "/resolve/main/")  # every file is fetched at the pinned commit
    assert directory == cache / "models" / "fake-sf" / SHA["sf"][:12]
    lock = Lock.load(cache / "models" / "fake-sf" / "pins.json")
    assert lock.revision("fake-org/self-forcing") == SHA["sf"]
    assert lock.revision("fake-org/wan-diffusers") == SHA["wan"]
    data = hub.repos["fake-org/self-forcing"].files[CKPT]
    recorded = lock.file("fake-org/self-forcing", SHA["sf"], CKPT)
    assert recorded == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    for path, blob in wan_files.items():
        entry = lock.file("fake-org/wan-diffusers", SHA["wan"], path)
        assert entry == {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    found = next(iter(lock.data["conversions"].values()))
    assert found["top_level_keys"] == ["generator_ema", "critic", "step"] and found["tensors"] == len(hub.sd)

    written = read_card(directory)  # a model directory in the layout modeldir loads
    assert written.family == "wan" and written.vae_kind == "wan" and written.text_encoder == "umt5"
    assert written.sources["transformer"]["revision"] == SHA["sf"]
    got = load_file(directory / "transformer.safetensors")
    assert got.keys() == hub.sd.keys() and all(torch.equal(got[k], v) for k, v in bf16(hub.sd).items())
    AutoencoderKLWan.from_pretrained(directory / "vae", local_files_only=True)
    UMT5EncoderModel.from_pretrained(directory / "text_encoder", local_files_only=True)
    AutoTokenizer.from_pretrained(directory / "text_encoder", local_files_only=True)
    assert cache_status(read_card(card), cache) == "yes"

    count = len(hub.requests)
    assert resolve_model(str(card), cache_dir=cache) == directory  # pinned and built: no consent, no Hub
    assert len(hub.requests) == count


def test_only_the_pinned_commit_is_trusted_after_main_moves(hub, wan_files, tmp_path):
    card, cache = write(tmp_path, card_dict(wan_files)), tmp_path / "c"
    first = resolve_model(str(card), cache_dir=cache, consent=lambda m: True)
    repo = hub.repos["fake-org/self-forcing"]
    repo.move_main("d" * 40, {CKPT: pickled(wrapper(plain(seed=9), "generator_ema", False))})
    shutil.rmtree(cache / "hub")
    shutil.rmtree(first)
    hub.requests.clear()
    again = resolve_model(str(card), cache_dir=cache, consent=lambda m: True)
    assert again == first and not gets(hub, "/resolve/main/") and gets(hub, f"/resolve/{SHA['sf']}/")
    got = load_file(again / "transformer.safetensors")
    assert all(torch.equal(got[k], v) for k, v in bf16(hub.sd).items())  # the pinned weights, not main's

    shutil.rmtree(cache / "hub")
    shutil.rmtree(again)
    hub.faults[CKPT] = "corrupt"  # same size, other bytes: the recorded sha256 catches it
    with pytest.raises(DownloadError, match=r"is corrupt: it has sha256 \w+, the lock file .*\.json pins"):
        resolve_model(str(card), cache_dir=cache, consent=lambda m: True)


def test_an_interrupted_first_download_resumes_at_the_pinned_commit(hub, wan_files, tmp_path):
    card, cache = write(tmp_path, card_dict(wan_files)), tmp_path / "c"
    hub.faults[CKPT] = "short"  # the first attempt fails after the pin was recorded
    with pytest.raises(DownloadError, match="cut short"):
        resolve_model(str(card), cache_dir=cache, consent=lambda m: True)
    assert (
        Lock.load(cache / "models" / "fake-sf" / "pins.json").revision("fake-org/self-forcing") == SHA["sf"]
    )
    del hub.faults[CKPT]
    hub.repos["fake-org/self-forcing"].move_main("e" * 40, {CKPT: b"a newer release"})
    asked: list[str] = []
    directory = resolve_model(str(card), cache_dir=cache, consent=lambda m: asked.append(m) or True)
    assert asked and directory.name == SHA["sf"][:12]  # still the first commit, not the new main
    got = load_file(directory / "transformer.safetensors")
    assert all(torch.equal(got[k], v) for k, v in bf16(hub.sd).items())


def test_longlive_lora_is_merged_at_conversion(hub, wan_files, tmp_path):
    sd, rank, alpha = plain(seed=3), 4, 2.0
    g = torch.Generator().manual_seed(1)
    lora, expected = {}, dict(sd)
    for key, w in sd.items():
        module = key.removesuffix(".weight")
        if not LORA_TARGET.fullmatch(module):
            continue
        a, b = torch.randn(rank, w.shape[1], generator=g), torch.randn(w.shape[0], rank, generator=g)
        lora[f"base_model.model.{module}.lora_A.default.weight"] = a
        lora[f"base_model.model.{module}.lora_B.default.weight"] = b
        expected[key] = w.float() + (alpha / rank) * (b @ a)
    files = {
        BASE: pickled(wrapper(sd, "generator", True)),
        LORA: pickled({"generator_lora": lora, "critic_lora": {"x": torch.zeros(1)}}),
    }
    hub.repos["fake-org/longlive"] = FakeRepo(SHA["ll"], files, set(files))
    d = card_dict(
        wan_files,
        name="fake-ll",
        repo="fake-org/longlive",
        files=[{"path": BASE, "approx_size": 1}, {"path": LORA, "approx_size": 1}],
        sub_dict="generator",
        lora={"path": LORA, "sub_dict": "generator_lora", "alpha": alpha},
    )
    d["sampling"] |= {"window": 6, "sink_frames": 2}
    directory = resolve_model(str(write(tmp_path, d)), cache_dir=tmp_path / "c", consent=lambda m: True)
    got = load_file(directory / "transformer.safetensors")
    assert all(torch.equal(got[k], v.to(torch.bfloat16)) for k, v in expected.items())
    assert sum(not torch.equal(got[k], sd[k].to(torch.bfloat16)) for k in sd) == len(lora) // 2
    report = json.loads((directory / "manifest.json").read_text())["conversion"]
    assert report["lora_modules"] == len(lora) // 2 and report["ignored"] == ["critic_lora"]


# ----------------------------------------------------------------------------- failures
def drop_key(hub):
    sd = dict(hub.sd)
    del sd["blocks.1.ffn.2.bias"]
    hub.repos["fake-org/self-forcing"].files[CKPT] = pickled(wrapper(sd, "generator_ema", True))


@pytest.mark.parametrize(
    "case, error, fragments",
    [
        ("truncated", DownloadError, ["self_forcing_dmd.pt was cut short", "run it again"]),
        ("corrupt", DownloadError, ["self_forcing_dmd.pt is corrupt", "the Hub reported", "was deleted"]),
        ("missing key", WeightsError, ["cannot be converted", "blocks.1.ffn.2.bias", "download it again"]),
        ("wrong sub-dict", WeightsError, ["has no sub-dict 'generator'", "generator_ema (", "set the card"]),
    ],
)
def test_bad_downloads_fail_in_one_line_and_leave_nothing(hub, wan_files, tmp_path, case, error, fragments):
    d = card_dict(wan_files, **({"sub_dict": "generator"} if case == "wrong sub-dict" else {}))
    if case in ("truncated", "corrupt"):
        hub.faults[CKPT] = "short" if case == "truncated" else "corrupt"
    elif case == "missing key":
        drop_key(hub)
    cache = tmp_path / "c"
    with pytest.raises(error) as info:
        resolve_model(str(write(tmp_path, d)), cache_dir=cache, consent=lambda m: True)
    message = str(info.value)
    assert "\n" not in message and all(f in message for f in fragments), message
    models = cache / "models" / "fake-sf"
    assert not (models / SHA["sf"][:12]).exists()  # no half-built directory, no temporary files
    assert not [p for p in cache.rglob("*") if p.name.endswith((".tmp", ".incomplete"))]
    assert cache_status(read_card(write(tmp_path, d)), cache) != "yes"


@pytest.mark.parametrize(
    "change, fragment",
    [
        (
            {"lora": {"path": "models/other.pt"}},
            "lora: path 'models/other.pt' is not one of the part's files",
        ),
        ({"format": "opensora-v1"}, "format 'opensora-v1' is not one of ('wan-wrapper', 'ca2vdm')"),
        ({"format": "ca2vdm"}, "sub_dict and lora apply only to a 'wan-wrapper' transformer"),
        ({"revision": "main"}, "must be a pinned 40-hex commit sha, or null to pin"),
        ({"lora": {"path": CKPT}}, "needs exactly one checkpoint file besides its LoRA"),
    ],
)
def test_sources_schema_errors_name_the_entry(wan_files, change, fragment):
    from ca2vdm_cli.errors import ConfigError
    from ca2vdm_cli.store.card import ModelCard
    from ca2vdm_cli.store.presets import parse_sources

    with pytest.raises(ConfigError, match=re.escape(fragment)):
        parse_sources(ModelCard.from_dict(card_dict(wan_files, **change)))


def test_models_lists_the_wan_presets_and_the_cards_are_complete():
    import subprocess
    import sys

    from ca2vdm_cli.store.presets import load_preset, parse_sources
    from tests.test_hub import ROOT

    out = subprocess.run(
        [sys.executable, "-m", "ca2vdm_cli", "models", "--json"], capture_output=True, text=True, cwd=ROOT
    )
    rows = {json.loads(r)["name"]: json.loads(r) for r in out.stdout.splitlines()}
    names = ["self-forcing", "causvid", "causal-forcing", "causal-forcing-i2v", "longlive"]
    for name in names:
        row, card = rows[name], load_preset(name)
        assert row["family"] == "wan" and row["license"] and row["use"] and row["cached"] == "no"
        assert re.fullmatch(r"\d\d\.\d\d GB", row["download"]) and row["params"] == "1419.0M"
        assert set(row["parts"]) == {"transformer", "vae", "text_encoder", "tokenizer"}
        src = parse_sources(card)
        assert src["transformer"].format == "wan-wrapper" and src["transformer"].revision is None
        parts = {src[r].repo for r in ("vae", "text_encoder", "tokenizer")}
        assert parts == {"Wan-AI/Wan2.1-T2V-1.3B-Diffusers"}
        assert "float32" in src["text_encoder"].notes and src["text_encoder"].params == 5680910336
        assert card.vae_kind == "wan" and card.text_encoder == "umt5" and card.text_max_length == 512
        assert (card.width, card.height, card.fps) == (832, 480, 16)
        assert card.accepts_images == (name == "causal-forcing-i2v") and card.text_to_video
    assert rows["self-forcing"]["download"] == "28.93 GB" and rows["longlive"]["download"] == "31.73 GB"
    for name in ("causvid", "longlive"):
        assert "CC BY-NC-SA" in rows[name]["license"] and "non-commercial" in rows[name]["use"]
    sf, cv, ll = load_preset("self-forcing"), load_preset("causvid"), load_preset("longlive")
    assert parse_sources(sf)["transformer"].sub_dict == "generator_ema"
    assert "beyond training" in sf.description
    assert (cv.sampling.timesteps, cv.sampling.shift, cv.sampling.warp) == ((1000, 757, 522), 8.0, False)
    assert load_preset("causal-forcing-i2v").sampling.chunk == 1
    assert (ll.sampling.window, ll.sampling.sink_frames) == (12, 3)
    assert parse_sources(ll)["transformer"].lora.path == "models/lora.pt"
    from ca2vdm_cli.store.memory import GIB, estimate_memory

    plan, long = estimate_memory(sf, "bf16"), estimate_memory(ll, "bf16")  # from the cards alone
    assert plan["transformer"] == 1_418_996_800 * 2 and plan["text_encoder"] == 5_680_910_336 * 2
    assert plan["vae"] == 126_892_531 * 2 and round(plan["kv_cache"] / GIB, 2) == 5.62
    assert round(long["kv_cache"] / GIB, 2) == 3.21
    table = subprocess.run(
        [sys.executable, "-m", "ca2vdm_cli", "models"], capture_output=True, text=True, cwd=ROOT
    ).stdout
    assert all(name in table for name in names) and "CC BY-NC-SA 4.0" in table


def test_download_with_the_hub_unreachable_is_one_line(tmp_path):
    from tests.test_hub import assert_one_line_error, download

    closed = FakeHub({}).start(ttl=5)
    url = closed.url
    closed.stop()
    out = download("self-forcing", tmp_path, url)  # type: ignore[arg-type]
    assert_one_line_error(
        out, f"cannot reach {url} to look up the current commit of gdhe17/Self-Forcing", "HF_ENDPOINT"
    )
    offline = download("longlive", tmp_path, url, HF_HUB_OFFLINE="1")  # type: ignore[arg-type]
    assert_one_line_error(offline, "is not pinned yet", "unset HF_HUB_OFFLINE for the first download")
    assert not (tmp_path / "cache" / "models" / "self-forcing" / "pins.json").exists()


def test_download_command_reports_the_first_download_pin(tmp_path, wan_files):
    from tests.test_hub import download

    live = FakeHub(tiny_repos(wan_files, plain())).start(ttl=60)
    try:
        out = download(write(tmp_path, card_dict(wan_files)), tmp_path, live.url)
    finally:
        live.stop()
    assert out.returncode == 0, out.stderr
    assert f"pinned fake-sf to fake-org/self-forcing@{SHA['sf']} on first download" in out.stderr
    assert f"pinned fake-sf to fake-org/wan-diffusers@{SHA['wan']} on first download" in out.stderr
    assert out.stdout.splitlines()[0] == str(tmp_path / "cache" / "models" / "fake-sf" / SHA["sf"][:12])
