"""NCA batches for pre-pre-training, read through the public loader and nothing else.

The trainer is a consumer of the shards like any other: it imports `nca_datagen.loader` (lazily, when a
dataset is opened) and never the generator (rules, rollout, kernels, generate). The loader already applies
the paper's masking (inputs seq[:C], targets seq[1:C+1], first-frame targets -100); this module only
stacks its samples into batches, moves to the next epoch when one ends, and saves its position.
"""

from __future__ import annotations

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


class NCABatches:
    """Batches of (input_ids, labels) B x C from `loader.NCADataset`, epoch after epoch."""

    def __init__(self, url: str, batch_size: int, split: str = "train", seed: int = 0, context: int | None = None):
        from nca_datagen import loader

        self.dataset = loader.NCADataset(url, split, seed=seed, shuffle=True, context=context)
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


def nca_val_batches(url: str, batch_size: int, max_sequences: int, context: int | None = None):
    """The first `max_sequences` validation sequences in manifest order (no shuffle), as a list of batches;
    None when the dataset has no (or an empty) validation split."""
    from nca_datagen import loader

    if not dataset_info(url)["samples"].get("val"):
        return None
    rows = []
    for row in loader.NCADataset(url, "val", shuffle=False, context=context):
        rows.append(row)
        if len(rows) >= max_sequences:
            break
    x = torch.stack([r["input_ids"] for r in rows])
    y = torch.stack([r["labels"] for r in rows])
    return list(zip(x.split(batch_size), y.split(batch_size), strict=True))
