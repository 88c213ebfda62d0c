"""Frame-ring bookkeeping shared by every model family: which cache slot holds which absolute frame.

Pure Python ints, no tensors. A ring of `capacity` slots keeps the first `sink` frames ever written pinned
in slots 0..sink-1 and the newest `capacity - sink` other frames in the remaining slots, FIFO: frame f
(f >= sink) sits in slot sink + (f - sink) mod (capacity - sink), so eviction never moves data. With
sink = 0 this is f mod capacity, the ring of the CausalSTDiT `KVCache`.

`restart(start)` forgets the non-sink frames and goes on writing at absolute frame `start`, from the first
slot after the sinks (a prompt switch re-encodes the newest frames that way; the sinks stay). Until the
next `reset`, non-sink frames are numbered from `start`: frame f sits in slot sink + (f - start) mod
(capacity - sink), and the held frames stay in slots 0..num_held-1.
"""

from __future__ import annotations


class FrameRing:
    """Slots of a bounded frame cache with `sink` pinned frames; `written` is the next absolute frame."""

    def __init__(self, capacity: int, sink: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if not 0 <= sink < capacity:
            raise ValueError(f"sink must satisfy 0 <= sink < capacity ({capacity}), got {sink}")
        self.capacity = capacity
        self.sink = sink
        self.written = 0
        self.base = sink  # absolute frame of the first non-sink slot's first occupant (see `restart`)

    @property
    def num_held(self) -> int:
        """Frames currently held (min(written, capacity) until a `restart`)."""
        return len(self._held_after(self.written))

    def slot(self, f: int) -> int:
        """Slot of absolute frame f."""
        if f < 0:
            raise ValueError(f"frame index must be >= 0, got {f}")
        if f < self.sink:
            return f
        return self.sink + (f - self.base) % (self.capacity - self.sink)

    def _held_after(self, written: int) -> list[int]:
        sinks = list(range(min(self.sink, written)))
        first = max(self.base, written - (self.capacity - self.sink))
        return sinks + list(range(first, written))

    def held_frames(self) -> list[int]:
        """Absolute indices held, oldest first (sink frames first)."""
        return self._held_after(self.written)

    def slot_frames(self) -> list[int]:
        """Absolute frame held in each valid slot 0..num_held-1, in slot order."""
        frames = [0] * self.num_held
        for f in self.held_frames():
            frames[self.slot(f)] = f
        return frames

    def window_positions(self) -> list[int]:
        """For each valid slot (slot order), the rank of its frame in `held_frames()` (0 = oldest)."""
        rank = {f: r for r, f in enumerate(self.held_frames())}
        return [rank[f] for f in self.slot_frames()]

    def write_plan(self, n: int) -> list[tuple[int, int, int]]:
        """(i, frame, slot) for each frame of the next n-frame write that survives it, i = index in the write.

        Frames that the same write overwrites (n larger than the free ring) are dropped; sinks never move.
        """
        self._check_n(n)
        survivors = set(self._held_after(self.written + n))
        return [
            (i, f, self.slot(f))
            for i, f in enumerate(range(self.written, self.written + n))
            if f in survivors
        ]

    def evicted_by(self, n: int) -> list[int]:
        """Absolute frames, held now, that a write of n frames would evict, oldest first."""
        self._check_n(n)
        after = set(self._held_after(self.written + n))
        return [f for f in self.held_frames() if f not in after]

    def advance(self, n: int) -> None:
        """Record that n more frames were written."""
        self._check_n(n)
        self.written += n

    def reset(self) -> None:
        """Forget every frame (next video); the slots are reused."""
        self.written = 0
        self.base = self.sink

    def restart(self, start: int) -> None:
        """Forget every non-sink frame and write next at absolute frame `start` (>= the sinks already
        written); the sinks stay where they are. `restart(0)` with no sinks is `reset`."""
        if start < min(self.sink, self.written) or start > self.written:
            raise ValueError(
                f"restart at frame {start}: it must lie between the sinks ({self.sink}) and written "
                f"({self.written})"
            )
        if start < self.sink:  # nothing but (part of) the sinks survives: start over from `start`
            self.written, self.base = start, self.sink
            return
        self.written, self.base = start, start

    @staticmethod
    def _check_n(n: int) -> None:
        if n < 0:
            raise ValueError(f"a write covers n >= 0 frames, got {n}")
