"""NCA batches for pre-pre-training, read through the public loader and nothing else.

The trainer is a consumer of the shards like any other. Its data (`NCAData`) is either:
- a built dataset (a folder or URL): read as stored through `loader.NCADataset`, which never imports the
  generator (rules, rollout, kernels, generate);
- a recipe, generated as it is read with no storage (`NCADataset.from_recipe`): a band ("50%+"), a mixture
  ("30-40%:0.3,50%+:0.7") or a curriculum ("30-40%>50%+@2M", `mixture.Mixture`). Its training split is
  unbounded; validation reads the first sequences of each source's own val split.

The loader already applies the paper's masking (inputs seq[:C], targets seq[1:C+1], first-frame targets -100);
this module only stacks its samples into batches, moves to the next epoch when one ends, and saves its position.
"""

from __future__ import annotations

import hashlib
import json
import math
import os

import torch


def dataset_info(url: str) -> dict:
    """Vocabulary size, sequence length, per-split sample and token counts, and the data's identity by content
    (`id`: a digest of every shard's sha256, so a moved copy keeps it and a rebuild with other settings does not),
    from its manifest."""
    from nca_datagen import manifest

    m = manifest.read_manifest(url)
    layout = m["sequence"]
    return {"vocab_size": layout["vocab_size"], "seq_len": layout["seq_len"],
            "tokens_per_frame": layout["tokens_per_frame"],
            "samples": {split: s["samples"] for split, s in m["splits"].items()},
            "tokens": {split: s["tokens"] for split, s in m["splits"].items()},
            "id": manifest.dataset_digest(m)}


class NCAData:
    """The NCA data of a run: a built dataset (`url`) or a recipe generated as it is read (`recipe`, with the
    build's other recipe options by name in `build_options`, e.g. {"grid": (8, 8), "frames": 12})."""

    def __init__(self, url: str | None = None, *, recipe: str | None = None, build_options: dict | None = None,
                 epoch_tokens: int | None = None):
        if (url is None) == (recipe is None):
            raise ValueError("NCA data is a dataset or a recipe: give one of them")
        if (build_options or epoch_tokens) and recipe is None:
            raise ValueError("build options and epoch tokens go with a recipe; a dataset's manifest fixes its own")
        self.url, self.recipe, self.build_options = url, recipe, dict(build_options or {})
        self.epoch_tokens = epoch_tokens  # a mixture's epoch (`Mixture`); a curriculum over datasets needs one
        self._info = None

    @classmethod
    def of(cls, data) -> NCAData:
        return data if isinstance(data, NCAData) else cls(str(data))

    @property
    def label(self) -> str:
        """How the run's summary and figures name it."""
        return str(self.url) if self.url is not None else f"recipe {self.recipe}"

    @property
    def sources(self) -> list[str]:
        """The recipes or datasets a recipe reads; a stored dataset's URL."""
        if self.url is not None:
            return [str(self.url)]
        if self._is_mixture():
            from nca_datagen.mixture import parse_spec

            return parse_spec(self.recipe)[0]
        return [self.recipe]

    def _is_mixture(self) -> bool:
        """A band or config file is one recipe, and so is a dataset (its recipe, generated); a spec with '>' or
        SOURCE:WEIGHT items is a mixture. Anything else is refused, naming what a spec can be."""
        from nca_datagen.generated import recipe_kind
        from nca_datagen.mixture import parse_spec

        if recipe_kind(self.recipe) in ("band", "file"):
            return False
        if ">" in self.recipe:
            return True
        try:
            parse_spec(self.recipe)
            return True
        except ValueError as exc:
            if "://" in self.recipe or os.path.exists(self.recipe):
                return False
            raise ValueError(f"--recipe {self.recipe!r} is not a band (50%+, 0.3:0.5), a dataset that exists, a "
                             f"mixture or a curriculum ({exc})") from None

    def stream(self, split: str = "train", *, seed: int = 0, shuffle: bool = True, context: int | None = None):
        """The split as the loader yields it: an `NCADataset`, or a `Mixture` for a mixture or curriculum."""
        from nca_datagen import loader

        options = dict(seed=seed, shuffle=shuffle, context=context)
        if self.url is not None:
            return loader.NCADataset(self.url, split, **options)
        if self._is_mixture():
            from nca_datagen.mixture import Mixture

            return Mixture.from_spec(self.recipe, build_options=self.build_options or None, split=split,
                                     epoch_tokens=self.epoch_tokens, **options)
        return loader.NCADataset.from_recipe(self.recipe, split, build_options=self.build_options or None, **options)

    def info(self) -> dict:
        """`dataset_info` of a dataset; of a recipe, its layout, unbounded splits (samples None) and an `id` that
        digests every source's identity and the mixture's weights."""
        if self._info is None:
            self._info = dataset_info(self.url) if self.url is not None else self._recipe_info()
        return self._info

    def _recipe_info(self) -> dict:
        stream = self.stream()
        sources = getattr(stream, "sources", [stream])
        layout = sources[0].layout
        # each source's id covers its recipe (build options included) or its shards
        identity = {"sources": [s.dataset_id for s in sources], "epoch_tokens": self.epoch_tokens,
                    "weights": stream.schedule.to_list() if hasattr(stream, "schedule") else None}
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        return {"vocab_size": layout["vocab_size"], "seq_len": layout["seq_len"],
                "tokens_per_frame": layout["tokens_per_frame"], "samples": {"train": None, "val": None},
                "tokens": {"train": None, "val": None}, "id": digest}

    def has_split(self, split: str) -> bool:
        return bool(self._sources_with(split))

    def _sources_with(self, split: str) -> list[NCAData]:
        """The parts of the data that have `split` with samples: a dataset's manifest says; a band's is
        unbounded. A mixture's parts are its sources, once each: a dataset read as stored, a band generated."""
        if self.url is not None:
            return [self] if self.info()["samples"].get(split) else []
        if not self._is_mixture():
            return [self] if not _is_dataset(self.recipe) or dataset_info(self.recipe)["samples"].get(split) else []
        parts = [NCAData(s) if _is_dataset(s) else NCAData(recipe=s, build_options=self.build_options)
                 for s in dict.fromkeys(self.sources)]
        return [part for part in parts if part._sources_with(split)]

    def first_rows(self, split: str, n: int, context: int | None = None) -> list[dict]:
        """The first `n` sequences of `split` in order (no shuffle): of a mixture, an equal share of each source
        that has the split, so validation covers every band of a curriculum whatever step training is at."""
        if self.url is not None or len(self.sources) == 1:
            return _take(self.stream(split, shuffle=False, context=context), n) if self.has_split(split) else []
        parts = self._sources_with(split)
        share = math.ceil(n / max(1, len(parts)))
        return [row for part in parts for row in _take(part.stream(split, shuffle=False, context=context), share)][:n]


def _is_dataset(recipe: str) -> bool:
    from nca_datagen.generated import recipe_kind

    return recipe_kind(recipe) == "dataset"


def _take(stream, n: int) -> list[dict]:
    rows = []
    for row in stream:
        rows.append(row)
        if len(rows) >= n:
            break
    return rows


class NCABatches:
    """Batches of (input_ids, labels) B x C from the loader, epoch after epoch (`data`: an `NCAData` or a
    dataset's folder or URL)."""

    def __init__(self, data, batch_size: int, split: str = "train", seed: int = 0, context: int | None = None):
        self.dataset = NCAData.of(data).stream(split, seed=seed, shuffle=True, context=context)
        self.batch_size = batch_size
        self.epoch = 0
        self._it = None

    def next(self):
        rows = []
        empty_epochs = 0
        while len(rows) < self.batch_size:
            if self._it is None:  # a new epoch
                self.dataset.set_epoch(self.epoch)
                self._it = iter(self.dataset)
            try:
                rows.append(next(self._it))
                empty_epochs = 0
            except StopIteration:
                self.epoch += 1
                self._it = None
                empty_epochs += 1
                if empty_epochs > 1:
                    raise ValueError("the dataset split yields no samples") from None
        return torch.stack([r["input_ids"] for r in rows]), torch.stack([r["labels"] for r in rows])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "dataset": self.dataset.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self.dataset.load_state_dict(state["dataset"])  # its epoch and the samples already yielded in it
        self._it = iter(self.dataset)


def nca_val_batches(data, batch_size: int, max_sequences: int, context: int | None = None):
    """The first `max_sequences` validation sequences (`NCAData.first_rows`), as a list of batches; None when
    the data has no (or an empty) validation split."""
    data = NCAData.of(data)
    rows = data.first_rows("val", max_sequences, context) if data.has_split("val") else []
    if not rows:
        return None
    x = torch.stack([r["input_ids"] for r in rows])
    y = torch.stack([r["labels"] for r in rows])
    return list(zip(x.split(batch_size), y.split(batch_size), strict=True))
