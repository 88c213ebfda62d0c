"""The sprites eval metrics on videos whose answers are known: the procedural world itself, and copies
broken in one way each (wrong colour, reversed motion, frozen sprite, seams at chunk boundaries)."""

from __future__ import annotations

import numpy as np

from ca2vdm_cli.sprites import evaluate as ev
from ca2vdm_cli.sprites import world as sprites

PROMPT = "a red circle moving right and a blue square moving down"


def world(frames: int = 48) -> np.ndarray:
    return sprites.render(sprites.scene_for_prompt(PROMPT, seed=1), frames)


def test_ground_truth_scores_perfectly():
    starts = ev.chunk_starts(48, 1, 4)
    scores = ev.aggregate([ev.score_video(world(), PROMPT, starts)], window=40)
    assert scores["presence"] > 0.97 and scores["absence"] == 1.0  # < 1: the sprites overlap in a frame
    assert scores["direction"] == 1.0
    assert scores["motion_first"] > 0.8 and scores["motion_last"] > 0.8  # overlaps hide a few steps
    assert 0.8 < scores["boundary_ratio"] < 1.25


def test_missing_and_unprompted_colours():
    video = world()
    red = np.all(video == (255, 0, 0), axis=-1)
    video[red] = (255, 128, 0)  # the red circle turned orange
    scores = ev.aggregate([ev.score_video(video, PROMPT, set())])
    assert scores["presence"] == 0.5  # blue present in every frame, red in none
    assert scores["absence"] < 0.05  # orange was not prompted (hidden only while behind the square)


def test_reversed_and_frozen_motion():
    reversed_video = world()[::-1].copy()
    scores = ev.aggregate([ev.score_video(reversed_video[:9], PROMPT, set())])
    assert scores["direction"] == 0.0
    frozen = np.repeat(world()[:1], 48, axis=0)
    scores = ev.aggregate([ev.score_video(frozen, PROMPT, set())])
    assert scores["direction"] == 0.0 and scores["motion_first"] == 0.0 and scores["presence"] == 1.0


def test_seams_at_chunk_boundaries_raise_the_ratio():
    video = world().astype(np.int16)
    starts = ev.chunk_starts(48, 1, 4)
    for s in starts:  # a brightness jump at the first frame of every chunk
        video[s:] = np.clip(video[s:] + (12 if (s // 4) % 2 else -12), 0, 255)
    scores = ev.aggregate([ev.score_video(video.astype(np.uint8), PROMPT, starts)])
    assert scores["boundary_ratio"] > 1.5


def test_colour_masks_tolerance():
    frame = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    frame[0, 0, 0] = (230, 20, 10)  # close to red
    frame[0, 0, 1] = (200, 64, 0)  # between red and orange: attributed to neither
    masks = ev.colour_masks(frame)
    red, orange = list(sprites.COLOURS).index("red"), list(sprites.COLOURS).index("orange")
    assert masks[0, red, 0, 0] and not masks[0, red, 0, 1] and not masks[0, orange, 0, 1]
    assert masks.sum() == 1
