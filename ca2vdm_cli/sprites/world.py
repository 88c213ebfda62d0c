"""The `sprites` procedural world: the data of the embedded default model, its held-out eval set, and the
first frames users give to `ca2vdm generate --image`.

64×64 RGB frames on a black background with 1–2 sprites (circle | square | triangle) in 8 saturated colours,
10–16 px, moving at a constant 1–3 px/frame in one of 8 directions and reflecting off the walls. Everything
is integer arithmetic driven by `random.Random(seed)`, so a seed gives the same video on every machine.
Prompts follow exactly `a {colour} {shape} moving {direction}`, two sprites joined by ` and `; the
direction is the initial one. Sprites start far enough from the walls that they do not bounce during the
first `HEADROOM` frames, so the prompted direction is what the start of the video shows.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ca2vdm_cli.errors import InputError

FRAME_SIZE = 64
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
    "white": (255, 255, 255),
    "orange": (255, 128, 0),
}
SHAPES = ("circle", "square", "triangle")
# unit steps (dx, dy) in image coordinates: x to the right, y downwards
DIRECTIONS: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
    "up-left": (-1, -1),
    "up-right": (1, -1),
    "down-left": (-1, 1),
    "down-right": (1, 1),
}
SIZES = (10, 16)  # inclusive range of sprite sizes in pixels
SPEEDS = (1, 3)  # inclusive range of pixels per frame along each moving axis
HEADROOM = 8  # frames without a bounce at the start of every video

_DIRECTION_WORDS = "|".join(sorted(DIRECTIONS, key=len, reverse=True))  # longest first: up-left before up
_PART = re.compile(rf"a ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}) moving ({_DIRECTION_WORDS})")


@dataclass(frozen=True)
class Sprite:
    colour: str
    shape: str
    direction: str
    size: int
    x: int  # top-left corner at frame 0
    y: int
    speed: int

    @property
    def velocity(self) -> tuple[int, int]:
        dx, dy = DIRECTIONS[self.direction]
        return dx * self.speed, dy * self.speed

    @property
    def phrase(self) -> str:
        return f"a {self.colour} {self.shape} moving {self.direction}"


@dataclass(frozen=True)
class Scene:
    sprites: tuple[Sprite, ...]

    @property
    def prompt(self) -> str:
        return " and ".join(s.phrase for s in self.sprites)


# ----------------------------------------------------------------------------- prompts
def parse_prompt(prompt: str) -> list[tuple[str, str, str]]:
    """`a red circle moving right and a blue square moving up` -> [(colour, shape, direction), …].

    Raises InputError naming the part that does not follow the grammar."""
    parts = prompt.strip().split(" and ")
    if not 1 <= len(parts) <= 2:
        raise InputError(f"prompt {prompt!r} has {len(parts)} sprites; the sprites world has 1 or 2")
    out = []
    for part in parts:
        match = _PART.fullmatch(part.strip())
        if match is None:
            raise InputError(
                f"{part!r} does not follow 'a {{colour}} {{shape}} moving {{direction}}' with colour in "
                f"{'|'.join(COLOURS)}, shape in {'|'.join(SHAPES)}, direction in {'|'.join(DIRECTIONS)}"
            )
        out.append((match.group(1), match.group(2), match.group(3)))
    if len(out) == 2 and out[0][0] == out[1][0]:
        raise InputError(f"prompt {prompt!r} uses the colour {out[0][0]!r} twice; give each sprite its own")
    return out


# ----------------------------------------------------------------------------- scenes
def _place(rng: random.Random, colour: str, shape: str, direction: str) -> Sprite:
    """Draw size, speed and a start position that keeps the sprite off the walls for HEADROOM frames."""
    size = rng.randint(*SIZES)
    speed = rng.randint(*SPEEDS)
    dx, dy = DIRECTIONS[direction]

    def start(d: int) -> int:
        travel = HEADROOM * speed
        if d > 0:
            return rng.randint(0, FRAME_SIZE - size - travel)
        if d < 0:
            return rng.randint(travel, FRAME_SIZE - size)
        return rng.randint(0, FRAME_SIZE - size)

    x = start(dx)
    y = start(dy)
    return Sprite(colour, shape, direction, size, x, y, speed)


def sample_scene(seed: int, num_sprites: int | None = None) -> Scene:
    """A random scene: 1 or 2 sprites (distinct colours), each with a random shape and direction."""
    rng = random.Random(f"sprites/{seed}")
    n = num_sprites if num_sprites is not None else rng.randint(1, 2)
    colours = rng.sample(sorted(COLOURS), n)
    sprites = [_place(rng, c, rng.choice(SHAPES), rng.choice(sorted(DIRECTIONS))) for c in colours]
    return Scene(tuple(sprites))


def scene_for_prompt(prompt: str, seed: int) -> Scene:
    """A scene showing exactly the prompted sprites; sizes, speeds and positions come from the seed."""
    rng = random.Random(f"sprites-prompt/{seed}")
    return Scene(tuple(_place(rng, c, s, d) for c, s, d in parse_prompt(prompt)))


# ----------------------------------------------------------------------------- rendering
def _mask(shape: str, size: int) -> np.ndarray:
    """Boolean (size, size) footprint of a shape in its bounding box."""
    centre = (np.arange(size) + 0.5) - size / 2  # pixel centres relative to the box centre
    yy, xx = np.meshgrid(centre, centre, indexing="ij")
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "circle":
        return xx**2 + yy**2 <= (size / 2) ** 2
    rows = np.arange(size)[:, None] + 1.0  # triangle pointing up: width grows linearly to the base
    return np.abs(xx) <= rows / 2


def trajectory(sprite: Sprite, num_frames: int) -> np.ndarray:
    """Top-left corners (num_frames, 2) as (x, y), reflecting off the walls (the box stays inside)."""
    out = np.empty((num_frames, 2), dtype=np.int64)
    pos = [sprite.x, sprite.y]
    vel = list(sprite.velocity)
    limit = FRAME_SIZE - sprite.size
    for f in range(num_frames):
        out[f] = pos
        for a in range(2):
            p = pos[a] + vel[a]
            if p < 0:
                p, vel[a] = -p, -vel[a]
            elif p > limit:
                p, vel[a] = 2 * limit - p, -vel[a]
            pos[a] = p
    return out


def render(scene: Scene, num_frames: int) -> np.ndarray:
    """The scene's first `num_frames` frames: uint8 (T, 64, 64, 3); later sprites are drawn on top."""
    frames = np.zeros((num_frames, FRAME_SIZE, FRAME_SIZE, 3), dtype=np.uint8)
    for sprite in scene.sprites:
        mask = _mask(sprite.shape, sprite.size)
        colour = np.array(COLOURS[sprite.colour], dtype=np.uint8)
        s = sprite.size
        for f, (x, y) in enumerate(trajectory(sprite, num_frames)):
            frames[f, y : y + s, x : x + s][mask] = colour
    return frames


def write_first_frame(prompt: str, seed: int, path: str | Path) -> Path:
    """Render frame 0 of `scene_for_prompt(prompt, seed)` to a PNG (the `--image first.png` of generate)."""
    from PIL import Image

    path = Path(path)
    Image.fromarray(render(scene_for_prompt(prompt, seed), 1)[0]).save(path)
    return path
