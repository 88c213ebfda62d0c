"""Batch job parsing, naming and sharding."""

from __future__ import annotations

from pathlib import Path

from ca2vdm_cli.engine.jobs import (
    mark_duplicate_outputs,
    output_name,
    output_path,
    parse_jobs,
    shard,
    slugify,
)

SOURCE = """\
# sky shots
a red circle moving right

{"prompt": "a blue square moving up", "seed": 7, "frames": 48, "image": "shots/a.png"}
{"prompt": "broken", "frames": }
{"prompt": "x", "frames": "many"}
{"prompt": "y", "colour": "red"}
   a green triangle moving left and a white circle moving down
[1, 2]
{"prompt": "abs", "out": "/tmp/fixed.mp4", "cfg_scale": 2}
"""


def test_text_and_json_lines_comments_and_blank_lines():
    items = parse_jobs(SOURCE.splitlines(), default_seed=3, base_dir=Path("/jobs"))
    assert [i.line for i in items] == [2, 4, 5, 6, 7, 8, 9, 10]
    assert [i.index for i in items] == list(range(8))
    first, second = items[0], items[1]
    assert (first.prompt, first.seed, first.image, first.error) == (
        "a red circle moving right",
        3,
        None,
        None,
    )
    assert (second.prompt, second.seed, second.image) == ("a blue square moving up", 7, "/jobs/shots/a.png")
    assert second.overrides == {"frames": 48}
    assert items[5].prompt == "a green triangle moving left and a white circle moving down"
    assert items[7].out == "/tmp/fixed.mp4" and items[7].overrides == {"cfg_scale": 2}


def test_bad_lines_carry_their_error_and_line_number():
    items = parse_jobs(SOURCE.splitlines())
    errors = {i.line: i.error for i in items if i.error}
    assert set(errors) == {5, 6, 7, 9}
    assert "line 5: invalid JSON" in errors[5]
    assert "frames='many' should be a int" in errors[6]
    assert "unknown keys ['colour']" in errors[7]
    assert "expected a JSON object" in errors[9]


def test_names_are_deterministic_and_distinct():
    a, b, c, d = parse_jobs(
        [
            "a red circle moving right",
            "a red circle moving right",
            '{"prompt": "a red circle moving right", "image": "x.png"}',
            '{"prompt": "a red circle moving right", "seed": 1}',
        ]
    )
    assert output_name(a) == output_name(b)
    assert output_name(a).startswith("a-red-circle-moving-right-") and output_name(a).endswith("-s0.mp4")
    assert len({output_name(a), output_name(c), output_name(d)}) == 3
    assert slugify("Ünïcode / only!!") == "n-code-only" and slugify("???") == "video"
    assert output_path(a, Path("renders")) == Path("renders") / output_name(a)


def test_sharding_renders_every_item_exactly_once():
    items = parse_jobs([f"prompt {i}" for i in range(11)])
    shards = [shard(items, r, 3) for r in range(3)]
    indices = sorted(i.index for s in shards for i in s)
    assert indices == list(range(11))
    assert [len(s) for s in shards] == [4, 4, 3]


def test_items_with_the_same_output_are_refused_after_the_first():
    items = parse_jobs(
        [
            "a red circle",
            '{"prompt": "a red circle", "frames": 9}',  # same prompt + seed: same name
            '{"prompt": "a red circle", "seed": 1}',
            '{"prompt": "x", "out": "renders/own.mp4"}',
            '{"prompt": "y", "out": "./renders/own.mp4"}',
            "{broken",
        ]
    )
    mark_duplicate_outputs(items, Path("renders"))
    errors = [i.error for i in items]
    assert errors[0] is None and errors[2] is None and errors[3] is None
    assert errors[1].startswith("line 2: same output as line 1 (renders/a-red-circle-")
    assert errors[4].startswith("line 5: same output as line 4 (renders/own.mp4)")
    assert errors[5].startswith("line 6: invalid JSON")  # its own error is kept
