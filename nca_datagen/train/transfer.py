"""Transfer from a pre-pre-trained decoder to a text model: keep chosen parts of the blocks, fresh the rest.

The paper keeps every decoder block and the final norm and creates a fresh token embedding and output
head for the text vocabulary; its ablations re-initialise attention, MLP or norms in chosen layers.
Here `parts` picks what is kept (any of "attn", "mlp", "norm"; "all" = all three; "none" = nothing, i.e.
training from scratch with the same shape) and `reinit_layers` lists blocks that are kept in no part.
"norm" covers each block's two RMSNorms and the final norm. Embedding and head are never transferred.

The text model is first initialised exactly as a scratch model with the same seed, then the kept tensors
are copied in: so scratch and NCA-initialised runs share every fresh tensor, and the only difference
between them is what was transferred.
"""

from __future__ import annotations

PARTS = ("attn", "mlp", "norm")


def parse_parts(spec: str | list | tuple) -> tuple[str, ...]:
    """"all" | "none" | comma list of attn, mlp, norm -> a sorted tuple of parts."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if items == ["all"]:
        return PARTS
    if items in ([], ["none"]):
        return ()
    bad = [s for s in items if s not in PARTS]
    if bad:
        raise ValueError(f"transfer parts {bad}: choose 'all', 'none' or a comma list of {', '.join(PARTS)}")
    return tuple(p for p in PARTS if p in items)


def parse_layers(spec: str | list | tuple | None) -> tuple[int, ...]:
    if spec is None or spec == "":
        return ()
    items = spec.split(",") if isinstance(spec, str) else spec
    try:
        return tuple(sorted({int(s) for s in items}))
    except ValueError:
        raise ValueError(f"reinit_layers={spec!r}: give block indices as a comma list, e.g. 0,3") from None


def check_layers(spec, depth: int) -> tuple[int, ...]:
    """`parse_layers`, and every block index below `depth`."""
    layers = parse_layers(spec)
    if any(not 0 <= i < depth for i in layers):
        raise ValueError(f"reinit_layers={list(layers)}: layers are 0..{depth - 1}")
    return layers


def part_of(name: str) -> tuple[str | None, int | None]:
    """(part, layer) of a decoder parameter name; part None for embedding and head, layer None outside blocks."""
    if name.startswith(("embed.", "head.")):
        return None, None
    if name.startswith("norm."):
        return "norm", None
    _, layer, module, *_ = name.split(".")  # blocks.3.attn.wq.weight
    return ("norm" if module.endswith("_norm") else module), int(layer)


def transfer_weights(model, source_state: dict, parts=PARTS, reinit_layers=()) -> dict:
    """Copy the chosen tensors of `source_state` (a decoder state dict) into `model` in place.

    Returns {"kept": [names], "fresh": [names]}. Shapes of kept tensors must match (same depth, width,
    heads, MLP); the vocabulary may differ since embedding and head stay fresh.
    """
    parts, reinit_layers = parse_parts(parts), check_layers(reinit_layers, model.cfg.depth)
    kept, fresh = [], []
    target = model.state_dict()
    for name in target:
        part, layer = part_of(name)
        if part in parts and layer not in reinit_layers:
            if name not in source_state or source_state[name].shape != target[name].shape:
                raise ValueError(f"cannot transfer {name}: the checkpoint's model has a different shape "
                                 f"({tuple(source_state[name].shape) if name in source_state else 'missing'} "
                                 f"vs {tuple(target[name].shape)})")
            target[name].copy_(source_state[name])
            kept.append(name)
        else:
            fresh.append(name)
    return {"kept": kept, "fresh": fresh, "parts": list(parts), "reinit_layers": list(reinit_layers)}
