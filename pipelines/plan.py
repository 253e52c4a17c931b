"""The build plan: token budgets -> whole rules -> whole shards, and the estimates `--dry-run` prints.

Tokens are counted as stored: every sequence contributes its full `seq_len` tokens (1026 at the paper's
settings: 27 frames x 38). The paper's "164M" counts the 1024 input tokens a sequence feeds the model
(16,000 rules x 10 sims x 1024 = 163.84M); the same data is 164.16M stored tokens, which is what `--preset paper`
asks for, so it plans exactly 16,000 x 10 training and 2,000 x 10 validation sequences. A budget becomes whole
rules (each `sims_per_rule` sequences), rules become whole shards (`samples_per_shard / sims_per_rule` rules
each); the shard count rounds up and every shard is full, because a shard's content is a function of
(config, split, index) alone. The trade-off: a small budget rounds up a lot (`rounding_note` says so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from nca_datagen.complexity import band_share
from nca_datagen.config import CANDIDATES_PER_RULE
from nca_datagen.errors import ConfigError
from nca_datagen.units import format_count, plural

# Estimates for --dry-run. Speed: benchmarks/bench_build.py at 45M tokens on a shared 2-core Xeon (numba backend,
# paper config, 50%+ band; results/build-40M.json) measured 1.4-1.6M stored tokens/s per worker in steady state;
# the GPU figure is a guess, not a measurement (no end-to-end GPU build has been measured; the design target, the
# paper's 184.7M stored tokens in < 10 s on an H200, needs >= 18.5M tokens/s and a faster start-up). Size: one
# 200-sequence 50%+ shard at the default zstd level (3) is 1.69 bytes/token (50%+ rules are near-incompressible by
# design; a 30-40% band gives ~0.94); plain tar is 4.04 (two 512-byte tar headers and the JSON member per
# sequence). Fixed costs on that machine: Ray start-up ~6 s, first shard ~2 s, manifest, card and shutdown ~3-4 s.
EST_TOKENS_PER_S_PER_CPU = 1.4e6
EST_TOKENS_PER_S_PER_GPU = 16e6
EST_STARTUP_S = 12.0
EST_BYTES_PER_TOKEN = {"zstd": 1.69, "none": 4.04}
PAPER = {"train_rules": 16_000, "val_rules": 2_000, "sims_per_rule": 10, "band": "50%+"}
DEFAULT_VAL_FRACTION = 0.125  # the paper's 2,000 validation rules per 16,000 training rules
MAX_SHARDS_PER_SPLIT = 10**6  # shard names have six digits (shards.shard_name); a brace pattern must name them all


@dataclass(frozen=True)
class SplitPlan:
    split: str
    tokens_requested: int
    rules: int  # whole shards' worth, >= what the budget needs
    shards: int
    sequences: int
    tokens: int  # stored tokens the split will hold

    @property
    def sequences_text(self) -> str:
        """'200 rules x 10 sims = 2,000 sequences', as the plan and the summary print it."""
        sims = self.sequences // self.rules if self.rules else 0
        return f"{plural(self.rules, 'rule')} x {plural(sims, 'sim')} = {plural(self.sequences, 'sequence')}"


@dataclass(frozen=True)
class BuildPlan:
    config: object  # DatasetConfig
    splits: tuple[SplitPlan, ...]

    @property
    def shards(self) -> dict[str, int]:
        return {s.split: s.shards for s in self.splits if s.shards}

    @property
    def total_shards(self) -> int:
        return sum(s.shards for s in self.splits)

    @property
    def total_tokens(self) -> int:
        return sum(s.tokens for s in self.splits)

    def estimated_bytes(self, compression: str) -> int:
        return int(self.total_tokens * EST_BYTES_PER_TOKEN[compression])

    def estimated_seconds(self, cpus: int, gpus: int = 0) -> float:
        """Start-up plus the plan's expected work at the measured speed. The speeds are tokens/s at the paper's
        config, so the work is counted in cell updates (rollouts and probes) and converted at that config's cell
        updates per token: a long burn-in, a large grid or a narrow band then costs what it does."""
        rate = gpus * EST_TOKENS_PER_S_PER_GPU if gpus else max(cpus, 1) * EST_TOKENS_PER_S_PER_CPU
        return EST_STARTUP_S + self.expected_cell_updates() / (rate * _paper_cell_updates_per_token())

    def expected_cell_updates(self) -> float:
        """Cell updates the plan takes: every sequence's steps, and the probes of the candidate rules its band
        needs to keep its rules (`band_share` of random rules fall inside)."""
        cfg = self.config
        sequences, rules = sum(s.sequences for s in self.splits), sum(s.rules for s in self.splits)
        candidates = rules / max(band_share(cfg.band), 1 / CANDIDATES_PER_RULE)
        return cfg.nca.grid[0] * cfg.nca.grid[1] * (sequences * cfg.nca.steps + candidates * cfg.probe_steps)


def _paper_cell_updates_per_token() -> float:
    """Cell updates per stored token of the config the speed constants were measured on (the paper's)."""
    from nca_datagen.config import DatasetConfig

    paper = plan_build(DatasetConfig(), 10**6, 0)
    return paper.expected_cell_updates() / paper.total_tokens


def plan_build(config, tokens: int, val_tokens: int | None = None, val_fraction: float | None = None) -> BuildPlan:
    """Turn token budgets into whole rules and whole shards (see the module docstring for the counting)."""
    if val_tokens is not None and val_fraction is not None:
        raise ConfigError("give --val-tokens or --val-fraction, not both")
    if val_fraction is not None and not 0 <= val_fraction < 1:
        raise ConfigError(f"--val-fraction {val_fraction}: choose 0 <= fraction < 1 (paper: 0.125)")
    if tokens <= 0:
        raise ConfigError("--tokens must be positive: how many training tokens to generate, e.g. 2M")
    if val_tokens is None:
        val_tokens = round(tokens * (DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction))
    return BuildPlan(config, (_split_plan(config, "train", tokens), _split_plan(config, "val", val_tokens)))


def _split_plan(config, split: str, tokens: int) -> SplitPlan:
    seq_len = config.nca.seq_len
    rules_needed = math.ceil(tokens / (seq_len * config.sims_per_rule))
    shards = math.ceil(rules_needed / config.rules_per_shard)
    if shards > MAX_SHARDS_PER_SPLIT:
        raise ConfigError(f"{split} would need {shards:,} shards of {config.samples_per_shard:,} sequences; a split "
                         f"holds at most {MAX_SHARDS_PER_SPLIT:,}: choose a larger --samples-per-shard")
    rules = shards * config.rules_per_shard
    sequences = rules * config.sims_per_rule
    return SplitPlan(split, tokens, rules, shards, sequences, sequences * seq_len)


PRESETS = ("paper",)
RECIPE_ARGS = ("complexity", "tokens", "val_tokens", "val_fraction", "seed", "sims_per_rule", "samples_per_shard",
               "grid", "states", "patch", "frames", "seq_len", "burn_in", "temperature")


def plan_from(preset: str | None = None, **given) -> BuildPlan:
    """The plan a build's recipe arguments make (`RECIPE_ARGS`; a `preset` fixes most of them). An argument left
    out (or None) takes the config's default, so the paper's values live once, in `config.py`."""
    given = _resolved(preset, given)
    if "tokens" not in given:
        raise ConfigError("give a budget, e.g. --tokens 2M (or --preset paper)")
    return plan_build(_config_of(given), given["tokens"], given.get("val_tokens"), given.get("val_fraction"))


def recipe_config(preset: str | None = None, **given):
    """The `DatasetConfig` of a build's recipe arguments, without a budget (a stream generated without end)."""
    return _config_of(_resolved(preset, given))


def _resolved(preset: str | None, given: dict) -> dict:
    given = {k: v for k, v in given.items() if v is not None}
    unknown = sorted(set(given) - set(RECIPE_ARGS))
    if unknown:
        raise ConfigError(f"unknown recipe argument(s) {', '.join(unknown)}: choose from {', '.join(RECIPE_ARGS)}")
    if preset is not None:
        given = _with_preset(preset, given)
    if "seq_len" in given and "frames" in given:
        raise ConfigError("give --frames or --seq-len, not both")
    return given


def _config_of(given: dict):
    from nca_datagen.complexity import Band

    band = given.get("complexity", "50%+")
    return dataset_config(band=band if isinstance(band, Band) else Band.parse(band),
                          **{k: given[k] for k in _CONFIG_ARGS if k in given})


_CONFIG_ARGS = ("grid", "states", "patch", "frames", "burn_in", "temperature", "seed", "sims_per_rule",
                "samples_per_shard", "seq_len")


def _with_preset(preset: str, given: dict) -> dict:
    """`given` with a preset's values; refused when it also sets one of them (naming the flags)."""
    if preset not in PRESETS:
        raise ConfigError(f"--preset {preset!r}: choose one of {', '.join(PRESETS)}")
    values = _paper_values()
    clashes = [k for k in (*values, "val_fraction", "seq_len") if k in given]
    if clashes:
        flags = ", ".join("--" + k.replace("_", "-") for k in clashes)
        raise ConfigError(f"--preset {preset} fixes {flags}; drop them or drop --preset")
    sims = values["sims_per_rule"]
    per_shard = given.get("samples_per_shard", _default_samples_per_shard())
    split_sequences = [PAPER[k] * sims for k in ("train_rules", "val_rules")]
    if any(n % per_shard for n in split_sequences):
        raise ConfigError(f"--preset {preset} builds exactly {split_sequences[0]:,} train and {split_sequences[1]:,} "
                          f"val sequences: choose a --samples-per-shard dividing both (e.g. 500 or 1000)")
    return {**given, **values}


def plan_from_manifest(manifest: dict) -> BuildPlan:
    """The plan that rebuilds a published dataset: its recipe, and exactly its shards per split. A manifest of
    another recipe version is refused (this version would make other bytes from the same config)."""
    from nca_datagen.config import RECIPE_VERSION, DatasetConfig
    from nca_datagen.manifest import recipe_version

    if recipe_version(manifest) != RECIPE_VERSION:
        raise ConfigError(f"the dataset was made by recipe version {recipe_version(manifest)} (nca-datagen "
                          f"{manifest.get('tool_version')}); this nca-datagen makes version {RECIPE_VERSION}, so it "
                          f"cannot reproduce it: use the version that made it")
    config = DatasetConfig.from_dict(manifest["config"])
    per_shard = config.samples_per_shard * config.nca.seq_len
    shards = {split: info["num_shards"] for split, info in manifest["splits"].items()}
    return plan_build(config, shards.get("train", 0) * per_shard, val_tokens=shards.get("val", 0) * per_shard)


def _paper_values() -> dict:
    """The paper's recipe: its rule family and rollout are `NCAConfig`'s defaults, its budget and band `PAPER`."""
    from nca_datagen.config import NCAConfig

    nca, sims = NCAConfig(), PAPER["sims_per_rule"]
    family = {k: getattr(nca, k) for k in ("grid", "states", "patch", "frames", "burn_in", "temperature")}
    return {**family, "complexity": PAPER["band"], "sims_per_rule": sims,
            "tokens": PAPER["train_rules"] * sims * nca.seq_len, "val_tokens": PAPER["val_rules"] * sims * nca.seq_len}


def _default_samples_per_shard() -> int:
    from nca_datagen.config import DatasetConfig

    return DatasetConfig.rules_per_shard * DatasetConfig.sims_per_rule


def dataset_config(*, band, grid=None, states=None, patch=None, frames=None, burn_in=None, temperature=None,
                   seed=None, sims_per_rule=None, samples_per_shard=None, seq_len=None):
    """The DatasetConfig of these values (None: the config's default); ConfigError names the option to fix."""
    from nca_datagen.config import DatasetConfig, NCAConfig

    sims = DatasetConfig.sims_per_rule if sims_per_rule is None else sims_per_rule
    per_shard = _default_samples_per_shard() if samples_per_shard is None else samples_per_shard
    if per_shard % sims:
        raise ConfigError(f"--samples-per-shard {per_shard} is not a multiple of --sims-per-rule {sims}: a shard "
                          f"holds whole rules; try {max(1, round(per_shard / sims)) * sims}")
    given = dict(grid=grid, states=states, patch=patch, burn_in=burn_in, temperature=temperature)
    nca = NCAConfig(**{k: v for k, v in given.items() if v is not None})
    if seq_len is not None:
        if seq_len % nca.tokens_per_frame:
            raise ConfigError(f"--seq-len {seq_len} is not a multiple of the {nca.tokens_per_frame} tokens per frame "
                              f"({nca.patches_per_frame} patches + 2 delimiters): try "
                              f"{max(1, round(seq_len / nca.tokens_per_frame)) * nca.tokens_per_frame}")
        frames = seq_len // nca.tokens_per_frame
    if frames is not None:
        nca = replace(nca, frames=frames)
    return DatasetConfig(nca=nca, band=band, seed=DatasetConfig.seed if seed is None else seed,
                         sims_per_rule=sims, rules_per_shard=per_shard // sims)


def rounding_note(plan: BuildPlan) -> str | None:
    """A word when whole shards make a split much larger than asked (small budgets: 200K -> one 513K shard)."""
    grown = [s for s in plan.splits if s.shards and s.tokens > 1.5 * max(s.tokens_requested, 1)]
    if not grown:
        return None
    asked = ", ".join(f"{s.split} {format_count(s.tokens_requested)} -> {format_count(s.tokens)}" for s in grown)
    return (f"whole shards of {plan.config.samples_per_shard:,} sequences round the budget up ({asked}); "
            f"a smaller --samples-per-shard rounds less")

