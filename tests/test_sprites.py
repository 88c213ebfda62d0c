"""The sprites world: determinism, the exact prompt grammar, colours, sizes, motion and reflection."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from ca2vdm_cli.errors import InputError
from ca2vdm_cli.sprites import world as sprites

GRAMMAR = re.compile(
    r"a (red|green|blue|yellow|magenta|cyan|white|orange) (circle|square|triangle) moving "
    r"(left|right|up|down|up-left|up-right|down-left|down-right)"
)


def test_same_seed_same_video_and_seeds_differ():
    a = sprites.render(sprites.sample_scene(7), 30)
    b = sprites.render(sprites.sample_scene(7), 30)
    c = sprites.render(sprites.sample_scene(8), 30)
    assert a.dtype == np.uint8 and a.shape == (30, 64, 64, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_prompts_follow_the_grammar_exactly():
    counts = {1: 0, 2: 0}
    for seed in range(300):
        scene = sprites.sample_scene(seed)
        parts = scene.prompt.split(" and ")
        counts[len(parts)] += 1
        assert all(GRAMMAR.fullmatch(p) for p in parts), scene.prompt
        assert sprites.parse_prompt(scene.prompt) == [(s.colour, s.shape, s.direction) for s in scene.sprites]
    assert counts[1] > 50 and counts[2] > 50  # both 1- and 2-sprite scenes occur


def test_pixels_are_black_or_an_exact_sprite_colour():
    allowed = {(0, 0, 0), *sprites.COLOURS.values()}
    assert sprites.COLOURS["orange"] == (255, 128, 0) and sprites.COLOURS["magenta"] == (255, 0, 255)
    for seed in range(20):
        video = sprites.render(sprites.sample_scene(seed), 10)
        assert {tuple(p) for p in video.reshape(-1, 3)} <= allowed


@pytest.mark.parametrize("seed", range(40))
def test_sizes_speeds_directions_and_reflection(seed):
    scene = sprites.sample_scene(seed)
    for s in scene.sprites:
        assert 10 <= s.size <= 16 and 1 <= s.speed <= 3
        path = sprites.trajectory(s, 200)
        assert path.min() >= 0 and path.max() <= 64 - s.size  # always inside the frame
        steps = np.abs(np.diff(path, axis=0))
        dx, dy = sprites.DIRECTIONS[s.direction]
        # reflection never changes which axes move (a step can be 0 only at a bounce)
        assert (steps[:, 0] == 0).all() if dx == 0 else (steps[:, 0] > 0).mean() > 0.9
        assert (steps[:, 1] == 0).all() if dy == 0 else (steps[:, 1] > 0).mean() > 0.9
        # the first HEADROOM frames move exactly in the prompted direction (no bounce yet)
        start = path[: sprites.HEADROOM + 1]
        assert np.array_equal(np.diff(start, axis=0), np.tile(s.velocity, (sprites.HEADROOM, 1)))


def test_a_bounce_reverses_the_velocity():
    s = sprites.Sprite("red", "square", "right", size=10, x=50, y=5, speed=3)
    path = sprites.trajectory(s, 6)
    assert path[:, 0].tolist() == [50, 53, 52, 49, 46, 43]  # 54 is the limit: 53 → 56 reflects to 52
    assert (path[:, 1] == 5).all()


def test_scene_for_prompt_and_first_frame_png(tmp_path):
    prompt = "a red circle moving right and a blue square moving up"
    scene = sprites.scene_for_prompt(prompt, seed=3)
    assert scene.prompt == prompt
    assert scene == sprites.scene_for_prompt(prompt, seed=3)
    path = sprites.write_first_frame(prompt, 3, tmp_path / "first.png")
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape == (64, 64, 3)
    assert np.array_equal(img, sprites.render(scene, 1)[0])
    colours = {tuple(p) for p in img.reshape(-1, 3)}
    assert (255, 0, 0) in colours and (0, 0, 255) in colours


@pytest.mark.parametrize(
    "bad",
    [
        "a purple circle moving right",
        "a red hexagon moving right",
        "a red circle moving sideways",
        "an orange circle moving left",
        "a red circle moving right and a red square moving up",
        "a red circle moving right and a blue square moving up and a green circle moving down",
        "",
    ],
)
def test_bad_prompts_raise_input_error(bad):
    with pytest.raises(InputError):
        sprites.parse_prompt(bad)
