"""Configuration: one small dataclass per concept, validated where it is built.

`NCAConfig` is the rule family and its rollout (what a sequence looks like). `DatasetConfig` is the recipe
of a whole dataset (band, seeds, how many rules and simulations). Both are frozen and turn into plain dicts
for the manifest (`to_dict` / `from_dict`), so a dataset can always be regenerated from its manifest.

Every `__post_init__` check names the bad value and says how to fix it: these are user-facing errors.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from nca_datagen.complexity import Band
from nca_datagen.errors import ConfigError

SPLITS = ("train", "val")  # split ids in seed derivation are the positions here: train=0, val=1

# Token ids must fit the shard format's uint16 with room for the two frame delimiters.
MAX_TOKEN_ID = 2**16 - 1
RULE_ID_STRIDE = 2**20  # candidate rule ids per shard: shard i owns ids i * stride + j, j < stride
CANDIDATES_PER_RULE = 100  # automatic probe budget per wanted rule: 6x what the rarest 10-point band needs
# (0.1-0.2 keeps 6.0% of random rules, paper-facts.md §3, so ~17 candidates a rule on average)
MAX_SAMPLES_PER_SHARD = 10**6  # sample keys are {split}-{shard:06d}-{sample:06d} (nca_datagen.shards)
MAX_STATES = 64  # the kernels unroll loops over states; beyond this nothing in the field uses them
# What one machine can do for one shard (a shard is the unit of work, retry and resume):
MAX_GRID_CELLS = 256 * 256  # the paper's grid is 12 x 12; a 256 x 256 state is 64 KiB, its frames a few MiB
MAX_SHARD_TOKENS = 2**27  # 256 MiB as uint16, held a few times over (tar, zstd) while the shard is written
MAX_SHARD_CELL_UPDATES = 4 * 10**9  # ~5 minutes of one CPU core at the ~15M cell updates/s numba runs per core
# The version of what a recipe makes: bumped whenever the same config gives other shard bytes (the integer
# arithmetic, tokenization, the shard format). Recorded in manifests and shard records, so that a dataset made
# by another version is named as such, not as corrupt. Version 1: weights at 12 fractional bits in every layer,
# hidden activations floored to 2^-10 (99.86% one-step agreement with the float network). Version 2: weights at
# 13/12/11 bits, hidden activations rounded to 2^-11 (99.93%; kernels/common.py, benchmarks/results/fidelity.md).
RECIPE_VERSION = 2


@dataclass(frozen=True)
class NCAConfig:
    """The paper's rule family (3x3 conv + MLP) and how a rule is rolled out into frames."""

    grid: tuple[int, int] = (12, 12)  # (height, width) in cells; periodic boundary
    states: int = 10  # alphabet size n
    patch: int = 2  # p: a token is one p x p patch of cells, so ids are 0..n^(p*p)-1
    hidden: tuple[int, int] = (4, 16)  # channels after the 3x3 conv, hidden width of the 1x1 MLP
    burn_in: int = 10  # steps before the first frame
    frames: int = 27  # frames per sequence: 27 x 38 = 1026 tokens at the paper's settings
    frame_stride: int = 1  # dT: steps between frames
    temperature: float = 1e-4  # tau of the categorical update; 0 = plain argmax (lowest state wins ties)
    identity_bias: float = 0.0  # beta added to the current state's logit before sampling
    weight_frac_bits: int = 12  # fixed point f: layers' weights are round(w * 2^(f+1, f, f-1)) (kernels/common.py)

    def __post_init__(self):
        object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        h, w = self.grid
        _require(len(self.grid) == 2 and h >= 3 and w >= 3,
                 f"grid={self.grid}: need (height, width), each at least 3 (the rule's 3x3 neighbourhood)")
        _require(2 <= self.states <= MAX_STATES, f"states={self.states}: choose 2..{MAX_STATES}")
        _require(self.patch >= 1, f"patch={self.patch}: must be a positive integer (the paper uses 2)")
        _require(h % self.patch == 0 and w % self.patch == 0,
                 f"grid {h}x{w} is not divisible by patch {self.patch}: choose a patch that divides both "
                 f"sides, or a grid that is a multiple of {self.patch}")
        _require(self.vocab_size - 1 <= MAX_TOKEN_ID,
                 f"states={self.states} with patch={self.patch} needs token ids up to {self.vocab_size - 1}, "
                 f"more than uint16 holds ({MAX_TOKEN_ID}); use fewer states or a smaller patch")
        _require(len(self.hidden) == 2 and min(self.hidden) >= 1,
                 f"hidden={self.hidden}: need two positive widths (paper: 4, 16)")
        _require(self.burn_in >= 0, f"burn_in={self.burn_in}: must be >= 0 (paper: 10)")
        _require(self.frames >= 1, f"frames={self.frames}: must be >= 1 (paper: 27)")
        _require(self.frame_stride >= 1, f"frame_stride={self.frame_stride}: must be >= 1 (paper: 1)")
        _require(0 <= self.temperature < math.inf, f"temperature={self.temperature}: must be >= 0 and finite "
                 "(paper: 1e-4)")
        _require(0 <= self.identity_bias < math.inf, f"identity_bias={self.identity_bias}: must be >= 0 and finite "
                 "(paper: 0)")
        _require(h * w <= MAX_GRID_CELLS,
                 f"grid {h}x{w} has {h * w:,} cells, more than the {MAX_GRID_CELLS:,} (256x256) one shard's "
                 f"rollouts hold in memory at once; choose a smaller grid")
        _require(8 <= self.weight_frac_bits <= 14,
                 f"weight_frac_bits={self.weight_frac_bits}: choose 8..14 (default 12)")
        from nca_datagen.rules import check_fixed_point_fits  # late: rules imports this module

        check_fixed_point_fits(self)

    @property
    def patches_per_frame(self) -> int:
        return (self.grid[0] // self.patch) * (self.grid[1] // self.patch)

    @property
    def tokens_per_frame(self) -> int:
        return self.patches_per_frame + 2  # <grid> patches... </grid>

    @property
    def seq_len(self) -> int:
        return self.frames * self.tokens_per_frame

    @property
    def vocab_size(self) -> int:
        """Patch ids 0..n^(p*p)-1, then <grid> and </grid>."""
        return self.states ** (self.patch * self.patch) + 2

    @property
    def steps(self) -> int:
        """Update steps in one rollout: burn-in, then one frame every `frame_stride` steps."""
        return self.burn_in + (self.frames - 1) * self.frame_stride

    def probe(self, frames: int) -> NCAConfig:
        """The same rule family rolled out for the complexity probe (same burn-in, fewer frames)."""
        return dataclasses.replace(self, frames=frames)


@dataclass(frozen=True)
class DatasetConfig:
    """The recipe of a dataset: everything `generate_shard` needs, recorded in the manifest."""

    nca: NCAConfig = field(default_factory=NCAConfig)
    band: Band = field(default_factory=lambda: Band.parse("50%+"))
    seed: int = 0  # run seed; every random draw derives from (seed, split, rule id, sim index)
    sims_per_rule: int = 10  # simulations per accepted rule, each from a fresh initial state (paper: 10)
    rules_per_shard: int = 50  # accepted rules per shard: 500 sequences (~1 MB of zstd) at 10 sims per rule
    probe_frames: int = 10  # frames s10..s19 of the probe trajectory feed the gzip filter (paper: 10)
    max_candidates_per_shard: int = 0  # 0 = automatic: max(2000, 100 x rules_per_shard), then fail loudly

    def __post_init__(self):
        if isinstance(self.band, str):
            object.__setattr__(self, "band", Band.parse(self.band))
        _require(self.seed >= 0, f"seed={self.seed}: must be a non-negative integer")
        _require(self.sims_per_rule >= 1, f"sims_per_rule={self.sims_per_rule}: must be >= 1 (paper: 10)")
        _require(self.rules_per_shard >= 1, f"rules_per_shard={self.rules_per_shard}: must be >= 1")
        _require(self.probe_frames >= 1, f"probe_frames={self.probe_frames}: must be >= 1 (paper: 10)")
        _require(self.max_candidates_per_shard >= 0,
                 f"max_candidates_per_shard={self.max_candidates_per_shard}: must be >= 0 (0 = automatic)")
        _require(self.samples_per_shard <= MAX_SAMPLES_PER_SHARD,
                 f"{self.samples_per_shard:,} samples per shard: at most {MAX_SAMPLES_PER_SHARD:,} (sample keys "
                 f"number them with six digits, so that keys sort in sample order)")
        _require(self.samples_per_shard * self.nca.seq_len <= MAX_SHARD_TOKENS,
                 f"a shard of {self.samples_per_shard:,} sequences x {self.nca.seq_len:,} tokens holds "
                 f"{self.samples_per_shard * self.nca.seq_len:,} tokens, more than the {MAX_SHARD_TOKENS:,} one "
                 f"shard may hold in memory; choose fewer samples per shard or frames")
        _require(self.shard_cell_updates <= MAX_SHARD_CELL_UPDATES,
                 f"one shard would take up to {self.shard_cell_updates:.3g} cell updates ({self.samples_per_shard:,} "
                 f"sequences x {self.nca.grid[0] * self.nca.grid[1]:,} cells x {self.nca.steps:,} steps, plus "
                 f"probing up to {self.candidate_limit:,} candidate rules), more than the {MAX_SHARD_CELL_UPDATES:.0e} "
                 f"one machine does in a few minutes (~5 min on one CPU core): lower burn-in, frames, grid or "
                 f"samples per shard")
        _require(self.candidate_limit <= RULE_ID_STRIDE,
                 f"{self.rules_per_shard:,} rules per shard (samples per shard / sims per rule) need up to "
                 f"{self.candidate_limit:,} candidate rules, but a shard owns {RULE_ID_STRIDE:,} candidate ids: "
                 f"choose at most {RULE_ID_STRIDE // CANDIDATES_PER_RULE:,} rules per shard")

    @property
    def samples_per_shard(self) -> int:
        return self.rules_per_shard * self.sims_per_rule

    @property
    def probe_steps(self) -> int:
        """Update steps of one probe trajectory: burn-in, then `probe_frames` frames."""
        return self.nca.burn_in + (self.probe_frames - 1) * self.nca.frame_stride

    @property
    def shard_cell_updates(self) -> int:
        """The most cell updates one shard takes: its rollouts, and probing its whole candidate budget (a band
        that keeps few rules probes all of it)."""
        cells = self.nca.grid[0] * self.nca.grid[1]
        return cells * (self.samples_per_shard * self.nca.steps + self.candidate_limit * self.probe_steps)

    @property
    def candidate_limit(self) -> int:
        return self.max_candidates_per_shard or max(2000, CANDIDATES_PER_RULE * self.rules_per_shard)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["band"] = self.band.to_dict()
        d["nca"]["grid"] = list(self.nca.grid)
        d["nca"]["hidden"] = list(self.nca.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DatasetConfig:
        d = dict(d)
        nca = NCAConfig(**d.pop("nca"))
        band = Band.from_dict(d.pop("band"))
        return cls(nca=nca, band=band, **d)


def recipe_fingerprint(config: DatasetConfig | dict, compression: str, version: int = RECIPE_VERSION) -> str:
    """The identity of what a recipe makes: 16 hex digits of the sha256 of its config (a `DatasetConfig` or its
    `to_dict()`), shard compression and recipe version. Shard records, build markers and manifests carry it, so a
    folder's files prove which recipe wrote them: a resume adopts, and a cleanup deletes, only shards whose record
    carries its own."""
    import hashlib
    import json

    config = config.to_dict() if isinstance(config, DatasetConfig) else config
    identity = {"config": config, "compression": compression, "recipe_version": version}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def split_id(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: choose one of {', '.join(SPLITS)}")
    return SPLITS.index(split)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)
