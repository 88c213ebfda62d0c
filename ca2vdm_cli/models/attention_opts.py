"""Training-free attention options (issue 15): TempCache KV compression, AnnCA and AnnSA, off by default.

One frozen `AttentionOptions` travels from the request to the model's cache (`CausalWan.new_cache(...,
attention=opts)`); every value is checked here, once, with a `ConfigError` that names the value and the
allowed range. `check_supported` refuses options a model cannot use (AnnCA without text, TempCache on
un-rotated relative keys, ...). The default is dense attention: the same code path as without options.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ca2vdm_cli.errors import ConfigError

KV_COMPRESS = ("none", "tempcache")
SPARSE_CROSS = ("none", "pad", "topk")
SPARSE_SELF = ("none", "lsh", "topk-blocks")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _in_range(name: str, value: float, low: float, high: float, *, low_open: bool = True) -> None:
    ok = (low < value if low_open else low <= value) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ConfigError(f"{name} must lie in {bracket}{low}, {high}]; got {value}")


@dataclass(frozen=True)
class AttentionOptions:
    """What the attention path may approximate. Fields:

    kv_compress: "tempcache" merges each new cached key into the previous frame's key at the same token
        position (or a (2·tempcache_radius+1)² neighbourhood) when their post-RoPE cosine is
        >= tempcache_threshold; the merged slot keeps the newest key, the mean value and a count whose
        log is added to its logit. tempcache_budget_frames bounds the slots (in frames of tokens;
        None = the dense capacity); when full the slots whose newest frame is oldest are evicted.
        tempcache_max_count caps a group's size (None = unbounded): a chain of merges drifts away from
        its oldest members, the cap bounds that drift at the price of less compression.
    sparse_cross: "pad" collapses the prompt's identical padding rows into one key with bias
        ln(count) (exact); "topk" also keeps, per frame, the cross_topk prompt tokens (or the smallest set
        reaching cross_mass of the softmax) chosen at a block's first call and reused for its other calls.
    sparse_self: "lsh" lets each query block of `query_block` rows attend to the cached key blocks
        (`key_block` rows) sharing a sign-random-projection bucket (lsh_bits bits, Hamming-1 probing),
        "topk-blocks" to the ceil(topk_density·blocks) best key blocks by mean-pooled q·k; both always
        attend densely to the sink frames, the previous frame and the block itself.
    seed: seeds the per-layer LSH projections.
    """

    kv_compress: str = "none"
    tempcache_threshold: float = 0.95
    tempcache_radius: int = 0
    tempcache_budget_frames: int | None = None
    tempcache_max_count: int | None = None
    sparse_cross: str = "none"
    cross_topk: int = 64
    cross_mass: float | None = None
    sparse_self: str = "none"
    lsh_bits: int = 6
    topk_density: float = 0.25
    query_block: int = 128
    key_block: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        _choice("kv_compress", self.kv_compress, KV_COMPRESS)
        _choice("sparse_cross", self.sparse_cross, SPARSE_CROSS)
        _choice("sparse_self", self.sparse_self, SPARSE_SELF)
        _in_range("tempcache_threshold", self.tempcache_threshold, 0.0, 1.0)
        _in_range("tempcache_radius", self.tempcache_radius, 0, 8, low_open=False)
        if self.tempcache_budget_frames is not None and self.tempcache_budget_frames < 2:
            raise ConfigError(
                f"tempcache_budget_frames must be >= 2 (or None for the dense capacity); "
                f"got {self.tempcache_budget_frames}"
            )
        if self.tempcache_max_count is not None and self.tempcache_max_count < 2:
            raise ConfigError(
                f"tempcache_max_count must be >= 2 (or None: unbounded); got {self.tempcache_max_count}"
            )
        if self.cross_topk < 1:
            raise ConfigError(f"cross_topk must be >= 1; got {self.cross_topk}")
        if self.cross_mass is not None:
            _in_range("cross_mass", self.cross_mass, 0.0, 1.0)
        _in_range("lsh_bits", self.lsh_bits, 1, 12, low_open=False)
        _in_range("topk_density", self.topk_density, 0.0, 1.0)
        _in_range("query_block", self.query_block, 1, 1 << 16, low_open=False)
        _in_range("key_block", self.key_block, 1, 1 << 16, low_open=False)

    @property
    def dense(self) -> bool:
        """True when nothing is approximated (the default)."""
        return self.kv_compress == self.sparse_cross == self.sparse_self == "none"

    def to_dict(self) -> dict[str, Any]:
        """Plain values for the run's JSON (only the knobs of the options in use, plus the three modes)."""
        d = asdict(self)
        keep = {"kv_compress", "sparse_cross", "sparse_self"}
        if self.kv_compress == "tempcache":
            keep |= {
                "tempcache_threshold",
                "tempcache_radius",
                "tempcache_budget_frames",
                "tempcache_max_count",
            }
        if self.sparse_cross == "topk":
            keep |= {"cross_mass"} if self.cross_mass is not None else {"cross_topk"}
        if self.sparse_self != "none":
            keep |= {"query_block", "key_block"}
            keep |= {"lsh_bits", "seed"} if self.sparse_self == "lsh" else {"topk_density"}
        return {k: v for k, v in d.items() if k in keep}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AttentionOptions:
        """The inverse of `to_dict` (unknown keys are a ConfigError)."""
        known = set(cls.__dataclass_fields__)
        bad = sorted(set(d) - known)
        if bad:
            raise ConfigError(f"unknown attention option(s) {bad}; known: {sorted(known)}")
        return cls(**d)

    def check_supported(
        self,
        *,
        model: str,
        has_text: bool,
        absolute_positions: bool = True,
        implemented: tuple[str, ...] = ("kv_compress", "sparse_cross", "sparse_self"),
    ) -> None:
        """Raise one ConfigError naming the first option `model` cannot use; `implemented` lists the
        options the model's attention path has (CausalSTDiT: none yet)."""
        for name in ("kv_compress", "sparse_cross", "sparse_self"):
            value = getattr(self, name)
            if value != "none" and name not in implemented:
                raise ConfigError(f"{name}={value!r} is not implemented for {model}; use {name}='none'")
        if self.sparse_cross != "none" and not has_text:
            raise ConfigError(
                f"sparse_cross={self.sparse_cross!r} needs text cross-attention, which {model} does not "
                "have; use sparse_cross='none'"
            )
        if self.kv_compress == "tempcache" and not absolute_positions:
            raise ConfigError(
                f"kv_compress='tempcache' compares post-RoPE keys, but {model} caches un-rotated keys "
                "(position_mode='relative'); use position_mode='absolute' or kv_compress='none'"
            )


DENSE = AttentionOptions()
