"""`ca2vdm download` against a loopback fake Hub (tests/fakehub.py): success, 404 repo/file/revision, a
body cut short, same-size corruption, server down with and without a cache, offline mode, stale partial
files, a truncated cached blob and a gated repo. Each run is a real subprocess, because huggingface_hub
reads HF_ENDPOINT / HF_HUB_OFFLINE at import; each error must be one line on stderr with exit code 1."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ca2vdm_cli.models.stdit.config import SamplingConfig
from ca2vdm_cli.store.card import ModelCard
from tests.conftest import tiny_config
from tests.fakehub import FakeHub, FakeRepo

ROOT = Path(__file__).resolve().parent.parent
REV = {"transformer": "1" * 40, "vae": "2" * 40, "t5": "3" * 40}
BLOBS = {
    "transformer": os.urandom(6000),
    "vae_weights": os.urandom(3000),
    "t5_weights": os.urandom(2000),
    "spiece": os.urandom(500),
}


def fake_repos(token: str | None = None) -> dict[str, FakeRepo]:
    return {
        "fake-org/transformer": FakeRepo(
            REV["transformer"],
            {"ca2vdm-transformer.safetensors": BLOBS["transformer"]},
            {"ca2vdm-transformer.safetensors"},
            token,
        ),
        "fake-org/vae": FakeRepo(
            REV["vae"],
            {
                "config.json": b'{"scaling_factor": 0.18215}',
                "diffusion_pytorch_model.safetensors": BLOBS["vae_weights"],
            },
            {"diffusion_pytorch_model.safetensors"},
        ),
        "fake-org/t5": FakeRepo(
            REV["t5"],
            {
                "config.json": b'{"d_model": 8}',
                "model.safetensors": BLOBS["t5_weights"],
                "spiece.model": BLOBS["spiece"],
            },
            {"model.safetensors", "spiece.model"},
        ),
    }


def card_dict(name: str = "fake-model", **transformer_overrides) -> dict:
    def file(path: str, data: bytes | None = None, pin: bool = False) -> dict:
        return {
            "path": path,
            "size": None,
            "approx_size": len(data or b"x"),
            "sha256": hashlib.sha256(data).hexdigest() if pin else None,
        }

    transformer = {
        "repo": "fake-org/transformer",
        "revision": REV["transformer"],
        "files": [file("ca2vdm-transformer.safetensors", BLOBS["transformer"], pin=True)],
        "format": "ca2vdm",
        "license": "Apache-2.0",
    } | transformer_overrides
    card = ModelCard(
        name=name,
        model=tiny_config(),
        sampling=SamplingConfig(chunk=4, cache_frames=9),
        height=64,
        width=64,
        text_max_length=7,
        sources={
            "transformer": transformer,
            "vae": {
                "repo": "fake-org/vae",
                "revision": REV["vae"],
                "license": "MIT",
                "files": [
                    file("config.json"),
                    file("diffusion_pytorch_model.safetensors", BLOBS["vae_weights"]),
                ],
            },
            "text_encoder": {
                "repo": "fake-org/t5",
                "revision": REV["t5"],
                "license": "Apache-2.0",
                "files": [file("config.json"), file("model.safetensors", BLOBS["t5_weights"])],
            },
            "tokenizer": {
                "repo": "fake-org/t5",
                "revision": REV["t5"],
                "license": "Apache-2.0",
                "files": [file("spiece.model", BLOBS["spiece"], pin=True)],
            },
        },
    )
    return card.to_dict()


@pytest.fixture
def world(tmp_path):
    hub = FakeHub(fake_repos()).start(ttl=120)
    card = tmp_path / "fake-model.json"
    card.write_text(json.dumps(card_dict()))
    yield hub, card, tmp_path
    hub.stop()


def download(
    card: Path, home: Path, url: str, *extra: str, **env_overrides: str
) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("HF_TOKEN", None)
    env |= {
        "HF_ENDPOINT": url,
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": str(home / "hf-home"),
        "XDG_CACHE_HOME": str(home / "xdg"),
    } | env_overrides
    args = [
        sys.executable,
        "-m",
        "ca2vdm_cli",
        "download",
        str(card),
        "--cache-dir",
        str(home / "cache"),
        *extra,
    ]
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def assert_one_line_error(out: subprocess.CompletedProcess, *fragments: str) -> str:
    assert out.returncode == 1, out.stderr
    assert out.stdout == "" and "Traceback" not in out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ")
    for fragment in fragments:
        assert fragment in line, line
    return line


def blob_dir(home: Path, repo: str) -> Path:
    return home / "cache" / "hub" / f"models--{repo.replace('/', '--')}" / "blobs"


def model_directory(home: Path) -> Path:
    return home / "cache" / "models" / "fake-model" / REV["transformer"][:12]


# ----------------------------------------------------------------------------- the happy path
def test_download_verifies_assembles_and_prints_the_paths(world):
    hub, card, home = world
    out = download(card, home, hub.url)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    directory = model_directory(home)
    assert lines[0] == str(directory)
    assert len(lines) == 1 + 6 and all(Path(p).is_file() for p in lines[1:])
    assert (directory / "transformer.safetensors").read_bytes() == BLOBS["transformer"]
    assert (directory / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == BLOBS["vae_weights"]
    assert (directory / "text_encoder" / "spiece.model").read_bytes() == BLOBS["spiece"]
    assert (directory / "text_encoder" / "config.json").is_file() and (directory / "ca2vdm.json").is_file()
    assert "downloading fake-org/transformer/ca2vdm-transformer.safetensors" in out.stderr
    gets = [r for r in hub.requests if r.startswith("GET")]
    assert len(gets) == 6

    again = download(card, home, hub.url)  # cached: nothing is fetched again
    assert again.returncode == 0 and again.stdout == out.stdout
    assert len([r for r in hub.requests if r.startswith("GET")]) == 6


def test_a_dropped_connection_is_resumed(world):
    hub, card, home = world
    hub.faults["ca2vdm-transformer.safetensors"] = "drop-once"
    out = download(card, home, hub.url)
    assert out.returncode == 0, out.stderr
    assert (model_directory(home) / "transformer.safetensors").read_bytes() == BLOBS["transformer"]


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "override, fragments",
    [
        ({"repo": "fake-org/missing"}, ["repository fake-org/missing was not found on http://127.0.0.1"]),
        (
            {"files": [{"path": "nope.safetensors", "approx_size": 1}]},
            ["nope.safetensors was not found in fake-org/transformer at revision 1111"],
        ),
        ({"revision": "f" * 40}, [f"revision {'f' * 40} of fake-org/transformer was not found"]),
    ],
    ids=["repo", "file", "revision"],
)
def test_404s_are_one_clear_line(world, override, fragments):
    hub, card, home = world
    card.write_text(json.dumps(card_dict(**override)))
    assert_one_line_error(download(card, home, hub.url), *fragments)


def test_a_body_cut_short_fails_and_leaves_nothing_behind(world):
    hub, card, home = world
    hub.faults["ca2vdm-transformer.safetensors"] = "short"
    assert_one_line_error(download(card, home, hub.url), "was cut short (got 3000 of 6000 bytes)")
    assert list(blob_dir(home, "fake-org/transformer").iterdir()) == []


@pytest.mark.parametrize(
    "path, repo, fragment",
    [
        ("ca2vdm-transformer.safetensors", "fake-org/transformer", "the model card pins"),  # pinned sha256
        (
            "diffusion_pytorch_model.safetensors",
            "fake-org/vae",
            "the Hub reported",
        ),  # LFS sha256 from the Hub
        ("config.json", "fake-org/vae", "has git sha1"),  # small file: git blob sha1 from the Hub
    ],
)
def test_same_size_corruption_is_caught_deleted_and_never_trusted(world, path, repo, fragment):
    hub, card, home = world
    hub.faults[path] = "corrupt"
    assert_one_line_error(download(card, home, hub.url), f"{repo}/{path} is corrupt", fragment, "was deleted")
    assert not any(
        p.read_bytes() == bytes(b ^ 0xFF for b in fake_repos()[repo].files[path])
        for p in blob_dir(home, repo).iterdir()
    )
    del hub.faults[path]
    assert download(card, home, hub.url).returncode == 0


def test_server_down_with_and_without_a_cached_copy(world):
    hub, card, home = world
    hub.stop()
    assert_one_line_error(download(card, home, hub.url), "cannot reach http://127.0.0.1", "HF_HUB_OFFLINE=1")

    live = FakeHub(fake_repos()).start(ttl=60)
    assert download(card, home, live.url).returncode == 0
    live.stop()
    assert download(card, home, live.url).returncode == 0  # the assembled directory is reused
    import shutil

    shutil.rmtree(model_directory(home))  # rebuilt from the verified Hub cache, without the server
    out = download(card, home, live.url)
    assert out.returncode == 0, out.stderr
    assert (model_directory(home) / "transformer.safetensors").read_bytes() == BLOBS["transformer"]


def test_offline_mode_uses_the_cache_only(world):
    hub, card, home = world
    assert_one_line_error(
        download(card, home, hub.url, HF_HUB_OFFLINE="1"), "HF_HUB_OFFLINE is set", "not in the cache"
    )
    assert hub.requests == []
    assert download(card, home, hub.url).returncode == 0
    count = len(hub.requests)
    assert download(card, home, hub.url, HF_HUB_OFFLINE="1").returncode == 0
    assert len(hub.requests) == count


def test_stale_partial_downloads_are_removed(world):
    hub, card, home = world
    blobs = blob_dir(home, "fake-org/transformer")
    blobs.mkdir(parents=True)
    stale = blobs / f"{hashlib.sha256(BLOBS['transformer']).hexdigest()}.0badc0de.incomplete"
    stale.write_bytes(b"\0" * 1234)
    out = download(card, home, hub.url)
    assert out.returncode == 0 and not stale.exists()
    assert "removed a stale partial download" in out.stderr


def test_a_truncated_cached_blob_is_detected_and_fetched_again(world):
    hub, card, home = world
    assert download(card, home, hub.url).returncode == 0
    blob = Path(os.path.realpath(model_directory(home) / "transformer.safetensors"))
    blob.write_bytes(BLOBS["transformer"][:1000])
    out = download(card, home, hub.url)
    assert out.returncode == 0, out.stderr
    assert "changed since it was verified" in out.stderr and "is corrupt" in out.stderr
    assert (model_directory(home) / "transformer.safetensors").read_bytes() == BLOBS["transformer"]


def test_revision_override_uses_the_hub_checksum_and_its_own_directory(world):
    hub, card, home = world
    out = download(card, home, hub.url, "--revision", "main")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == str(home / "cache" / "models" / "fake-model" / "main")
    assert "pinned sha256s do not apply" in out.stderr
    hub.faults["ca2vdm-transformer.safetensors"] = "corrupt"  # still caught, by the Hub's sha256
    (home / "cache" / "models").rename(home / "old-models")
    for blob in blob_dir(home, "fake-org/transformer").iterdir():
        blob.unlink()
    assert_one_line_error(download(card, home, hub.url, "--revision", "main"), "the Hub reported")


def test_a_gated_repo_needs_hf_token(world):
    hub, card, home = world
    hub.repos.update({k: v for k, v in fake_repos(token="s3cret").items() if k == "fake-org/transformer"})
    assert_one_line_error(download(card, home, hub.url), "needs authorisation", "HF_TOKEN")
    assert download(card, home, hub.url, HF_TOKEN="s3cret").returncode == 0
