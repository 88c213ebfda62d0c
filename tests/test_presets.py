"""Model cards shipped in the package: found through `importlib.resources`, valid, pinned; `ca2vdm models`;
and how `resolve_model` treats names and paths that need no download."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from ca2vdm_cli.errors import ConfigError
from ca2vdm_cli.store.card import ModelCard, write_card
from ca2vdm_cli.store.presets import PACKAGE, load_preset, packaged_weights, parse_sources, preset_names
from ca2vdm_cli.store.weights import resolve_model
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ["opensora-v1-256", "opensora-v1-512", "ca2vdm-official-sky", "ca2vdm-official-text-image"]


def test_cards_are_found_through_the_package():
    import importlib.resources

    root = importlib.resources.files(PACKAGE)
    assert Path(str(root)).resolve() == (ROOT / "weights").resolve()  # the editable install maps weights/
    assert packaged_weights() == root
    for name in PRESETS:
        assert (root / f"{name}.json").is_file()
    assert set(PRESETS) <= set(preset_names())


def test_pyproject_lists_every_package():
    """`packages` is explicit (weights/ is mapped to ca2vdm_cli.bundled_weights), so a new subpackage must
    be added there or it silently disappears from the wheel."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "ca2vdm_cli").rglob("__init__.py")}
    assert on_disk | {PACKAGE} == listed


@pytest.mark.parametrize("name", PRESETS)
def test_preset_cards_are_valid_and_pinned(name):
    card = load_preset(name)
    sources = parse_sources(card)
    assert card.name == name and card.license and card.intended_use
    for src in sources.values():
        assert src.license
        if not src.local:
            assert re.fullmatch(r"[0-9a-f]{40}", src.revision)
            assert all(f.size or f.approx_size for f in src.files)
    assert "vae" in sources and (("text_encoder" in sources) == card.model.has_text)
    if name.startswith("opensora"):
        pth = sources["transformer"].files[0]
        assert sources["transformer"].repo == "hpcai-tech/Open-Sora" and pth.path.endswith(".pth")
        assert pth.sha256 and "trained bidirectionally" in card.description
        assert "NOT a trained Ca2-VDM" in card.description and "fine-tuning" in card.intended_use
        assert card.model.has_pe and card.model.mask_channel and card.model.tpe_mode == "cyclic"


def test_models_command_prints_the_table_on_stdout():
    out = subprocess.run(
        [sys.executable, "-m", "ca2vdm_cli", "models"], capture_output=True, text=True, cwd=ROOT, check=True
    )
    for name in PRESETS:
        assert name in out.stdout
    assert "909.7M" in out.stdout and "754.9M" in out.stdout and "Apache-2.0" in out.stdout
    rows = subprocess.run(
        [sys.executable, "-m", "ca2vdm_cli", "models", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    ).stdout.splitlines()
    parsed = {json.loads(r)["name"]: json.loads(r) for r in rows}
    assert (
        parsed["opensora-v1-256"]["cached"] == "no"
        and parsed["ca2vdm-official-sky"]["cached"] == "needs --weights"
    )


def test_resolve_returns_a_local_model_directory_as_is(tmp_path):
    card = ModelCard(
        name="mine",
        model=tiny_config(),
        sampling=load_preset("opensora-v1-256").sampling.replace(cfg_scale=1.0),
        height=64,
        width=64,
        text_max_length=7,
    )
    write_card(tmp_path / "m", card)
    assert resolve_model(str(tmp_path / "m")) == tmp_path / "m"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no model card"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="--weights is only used with the ca2vdm-official"):
        resolve_model(str(tmp_path / "m"), weights=tmp_path / "x.pth")


def test_resolve_names_the_fix_for_bad_names(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown model 'sora'; presets: .*opensora-v1-256"):
        resolve_model("sora")
    with pytest.raises(
        ConfigError,
        match="names several models .*: use one of ca2vdm-official-sky, ca2vdm-official-text-image",
    ):
        resolve_model("ca2vdm-official")
    with pytest.raises(ConfigError, match="pass --weights PATH"):
        resolve_model("ca2vdm-official-sky")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model("./no/such/model")
    if not (packaged_weights() / "sprites").is_dir():
        with pytest.raises(ConfigError, match="embedded default model 'sprites' is not in this build"):
            resolve_model("sprites")


def test_sources_schema_errors_name_the_entry():
    base = load_preset("opensora-v1-256").to_dict()
    bad_rev = json.loads(json.dumps(base))
    bad_rev["sources"]["vae"]["revision"] = "main"
    with pytest.raises(ConfigError, match="sources.vae: revision 'main' must be a pinned 40-hex commit sha"):
        parse_sources(ModelCard.from_dict(bad_rev))
    bad_sha = json.loads(json.dumps(base))
    bad_sha["sources"]["transformer"]["files"][0]["sha256"] = "abc"
    with pytest.raises(ConfigError, match="not 64 hex digits"):
        parse_sources(ModelCard.from_dict(bad_sha))
    extra = json.loads(json.dumps(base))
    extra["sources"]["vae"]["mirror"] = "x"
    with pytest.raises(ConfigError, match=r"sources.vae: unknown keys \['mirror'\]"):
        parse_sources(ModelCard.from_dict(extra))


@pytest.mark.slow
def test_a_real_wheel_ships_the_cards(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for name in PRESETS:
        assert f"ca2vdm_cli/bundled_weights/{name}.json" in names
    assert "ca2vdm_cli/store/weights.py" in names and "ca2vdm_cli/cli/download.py" in names
    # installed (not editable), the cards are found through the package from any working directory
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    code = "from ca2vdm_cli.store import presets as p; print(p.packaged_weights()); print(p.preset_names())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
        env={**os.environ, "PYTHONPATH": str(target)},
    ).stdout.splitlines()
    assert out[0] == str(target / "ca2vdm_cli" / "bundled_weights")
    assert all(name in out[1] for name in PRESETS)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["download", "ca2vdm-official-sky"], "pass --weights PATH"),
        (["download", "no-such-model"], "unknown model 'no-such-model'; presets:"),
        (
            ["download", "opensora-v1-256", "--weights", "x.pth"],
            "--weights is only used with the ca2vdm-official",
        ),
    ],
)
def test_download_usage_mistakes_are_one_line(args, fragment):
    out = subprocess.run(
        [sys.executable, "-m", "ca2vdm_cli", *args], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 1 and out.stdout == "" and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and fragment in out.stderr
