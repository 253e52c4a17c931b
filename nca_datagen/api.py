"""The Python API: what `nca-datagen build` does, as a function that returns its result and raises `errors`.

    import nca_datagen as nd
    result = nd.build("data/nca-web", complexity="50%+", tokens="2M", executor="inline")
    result.manifest["totals"]["tokens"]

Arguments are the command's flags with underscores. A recipe argument left out takes the config's default (the
paper's rule family), and `preset="paper"` fixes them all. Refusals and failures raise the classes of
`nca_datagen.errors`; Ctrl-C and SIGTERM raise `errors.Interrupted`, saying what is kept. The command line is a
thin wrapper around `build` (and `run`, for a plan and placement it has already made).
"""

from __future__ import annotations

from nca_datagen.errors import ConfigError, Interrupted
from nca_datagen.pipelines.driver import BuildOptions, BuildResult, echo_stderr, run_build, terminate_as_interrupt
from nca_datagen.pipelines.placement import Placement
from nca_datagen.pipelines.plan import BuildPlan, plan_from
from nca_datagen.units import parse_count, parse_grid


def build(out: str, *, preset: str | None = None, compression: str = "zstd", overwrite: bool = False,
          executor: str = "ray", ray_address: str | None = None, workers: int | None = None,
          gpus: int | None = None, actors_per_gpu: int | None = None, device: str = "auto", backend: str = "auto",
          retries: int = 2, storage_options: dict | None = None, quiet: bool = False, **recipe) -> BuildResult:
    """Build (or resume, or repair) the dataset of `recipe` at `out`, a folder or URL (s3://, gs://, az://,
    memory://; hf:// through `publish`). `recipe`: complexity, tokens, val_tokens, val_fraction, seed,
    sims_per_rule, samples_per_shard, grid, states, patch, frames, seq_len, burn_in, temperature (counts take
    "2M"; grids take "12x12")."""
    plan = make_plan(preset, **recipe)
    placement = Placement(executor, ray_address, workers, gpus, actors_per_gpu, device, backend)
    return run(out, plan, placement, compression=compression, overwrite=overwrite, retries=retries,
               storage_options=storage_options, quiet=quiet)


def make_plan(preset: str | None = None, **recipe) -> BuildPlan:
    """The plan of a recipe (see `build`), with counts and grids also taken as text."""
    if recipe.get("from_manifest") is not None:
        raise ConfigError("from_manifest: use `reproduce`, which also gives the compression")
    recipe.pop("from_manifest", None)
    for key in ("tokens", "val_tokens"):
        if isinstance(recipe.get(key), str):
            recipe[key] = parse_count(recipe[key], what=key)
    if isinstance(recipe.get("grid"), str | int):
        recipe["grid"] = parse_grid(recipe["grid"])
    return plan_from(preset, **recipe)


def reproduce(url: str, storage_options: dict | None = None, **recipe) -> tuple[BuildPlan, str]:
    """(plan, compression) that rebuild the published dataset at `url` shard for shard, from its manifest alone
    (no shard is downloaded); recipe arguments are refused, since the manifest fixes them all."""
    from nca_datagen.manifest import read_manifest
    from nca_datagen.pipelines.plan import plan_from_manifest

    given = sorted(k for k, v in recipe.items() if v is not None)
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ConfigError(f"--from-manifest fixes the recipe: drop {flags}")
    manifest = read_manifest(url, storage_options)
    compression = next(iter(info["compression"] for info in manifest["splits"].values()), "zstd")
    return plan_from_manifest(manifest), compression


def run(out: str, plan: BuildPlan, placement: Placement, *, compression: str = "zstd", overwrite: bool = False,
        retries: int = 2, storage_options: dict | None = None, quiet: bool = False, command: str = "",
        echo=echo_stderr) -> BuildResult:
    """Build `plan` at `out` where `placement` says. The output is claimed first (one writer: `claim.py`), after
    the refusals that need no write; a finished copy of this very dataset is verified and left as it is."""
    from nca_datagen.claim import claim
    from nca_datagen.ownership import check_output

    _check_store(out, placement, storage_options)
    # someone else's folder is refused before the claim writes into it (the refusal --overwrite keeps)
    check_output(out, plan.config, compression, overwrite=True, storage_options=storage_options)
    opts = BuildOptions(out_url=out, compression=compression, storage_options=storage_options,
                        backend=None if placement.backend == "auto" else placement.backend, overwrite=overwrite,
                        quiet=quiet, max_attempts=retries + 1, command=command, echo=echo)
    with claim(out, storage_options, doing="build", command=command) as held:
        if not overwrite and (manifest := already_built(plan, out, compression, storage_options, echo)):
            return BuildResult(manifest, plan, log_path="", nothing_to_do=True)
        # a taken output is refused before Ray starts (~6 s on 2 cores); run_build asks again, then writes
        check_output(out, plan.config, compression, overwrite=overwrite, storage_options=storage_options,
                     planned=plan.shards)
        executor = _start(placement)
        opts.claim = held
        return run_build(plan, executor, opts)


def _check_store(out: str, placement: Placement, storage_options) -> None:
    """Refuse, before anything is read, a store no build writes (hf://: `publish` alone; stores without a claim)
    and memory:// under Ray, whose workers are other processes that cannot see this one's memory."""
    from nca_datagen import storage
    from nca_datagen.claim import claim_kind

    fs, root = storage.filesystem(out, storage_options)
    claim_kind(fs, root)
    if storage.scheme(fs) == "memory" and placement.executor != "inline":
        raise ConfigError(f"{out}: a memory:// store lives in this process alone, and Ray's workers are other "
                          f"processes: pass --executor inline (executor=\"inline\")")


def _start(placement: Placement):
    """The placement's executor; Ctrl-C or SIGTERM while Ray starts leaves nothing written."""
    with terminate_as_interrupt() as seen:
        try:
            return placement.start()
        except KeyboardInterrupt as exc:
            import sys

            ray = sys.modules.get("ray")
            if ray is not None and ray.is_initialized():
                ray.shutdown()
            raise Interrupted("interrupted before any shard was built: nothing was written", seen.of(exc)) from None


def already_built(plan: BuildPlan, out: str, compression: str, storage_options=None, echo=echo_stderr) -> dict | None:
    """The manifest, when `out` holds the finished dataset of this plan whole: the same recipe and shards, each
    shard and its record verified (size and sha256), and the tables and card the manifest lists. Rerunning a
    build that completed then does nothing; one whose dataset was damaged since rebuilds what is missing or
    damaged (said here), as rerunning an interrupted one finishes it."""
    from nca_datagen import storage
    from nca_datagen.config import recipe_fingerprint
    from nca_datagen.manifest import manifest_recipe, read_manifest
    from nca_datagen.ownership import remove_build_marker, remove_stale_files
    from nca_datagen.pipelines.resume import damaged_files, resume_state
    from nca_datagen.units import plural

    try:
        manifest = read_manifest(out, storage_options)
    except ValueError:  # no dataset there (or none readable): the ownership rules decide
        return None
    recipe = recipe_fingerprint(plan.config, compression)
    shards = {split: info["num_shards"] for split, info in manifest["splits"].items()}
    if manifest_recipe(manifest) != recipe or shards != plan.shards:
        return None
    fs, root = storage.filesystem(out, storage_options)
    _, todo = resume_state(plan, fs, root, recipe)
    damaged = damaged_files(fs, root, manifest)
    if todo or damaged:
        echo(f"{out} holds this dataset, damaged: rebuilding {plural(len(todo), 'shard')} that "
             f"{'is' if len(todo) == 1 else 'are'} missing or fail their sha256"
             + (f", and rewriting {', '.join(damaged)}" if damaged else ""))
        return None
    remove_build_marker(fs, root)  # a build interrupted between its manifest and removing its marker left one
    remove_stale_files(fs, root, plan.shards)  # and a killed write its temporary file
    return manifest
