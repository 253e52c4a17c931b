"""Plain-torch reference rollout: readable, batched, exact on any device (CPU or CUDA).

This is the definition every faster backend is tested against, bit for bit. It keeps every intermediate as
an int64 tensor; the fixed-point bounds (`nca_datagen.rules.fixed_point_bounds`) guarantee the values stay
inside int32, so int32 backends compute the same numbers. No float touches the state after quantisation.

Legend: B trajectories, R rules, H x W cells (C = H*W flattened), K = 9 neighbour offsets, S states,
C1/C2 hidden widths, F frames, L tokens.
"""

from __future__ import annotations

import torch

from .common import GUMBEL_BITS, HASH_M1, HASH_M2, MASK32, RolloutSpec


def hash32_torch(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding uint32 values (see common.hash32)."""
    x = x & MASK32
    x = x ^ (x >> 16)
    x = (x * HASH_M1) & MASK32
    x = x ^ (x >> 15)
    x = (x * HASH_M2) & MASK32
    return x ^ (x >> 15)


def gumbel_noise(keys_B: torch.Tensor, step: int, spec: RolloutSpec, table: torch.Tensor) -> torch.Tensor:
    """Quantised, temperature-scaled Gumbel noise (B, C, S) for the update applied to state `step`."""
    cells = spec.height * spec.width
    counter = torch.arange(cells, device=keys_B.device, dtype=torch.int64) + step * cells
    cell_bits = hash32_torch(keys_B.long()[:, None] ^ hash32_torch(counter)[None, :])
    states = torch.arange(spec.states, device=keys_B.device, dtype=torch.int64)
    state_bits = hash32_torch(cell_bits[..., None] ^ states)
    return table[state_bits >> (32 - GUMBEL_BITS)]


def logits_reference(state_BHW, w1_BKSC, w2_BCJ, w3_BJS, spec: RolloutSpec) -> torch.Tensor:
    """The network's integer logits (B, C, S) at scale 2^logit_frac_bits, before identity bias and noise."""
    b, h, w = state_BHW.shape
    c1 = w1_BKSC.shape[-1]
    hid_BCC1 = torch.zeros(b, h * w, c1, dtype=torch.int64, device=state_BHW.device)
    for dy in range(3):
        for dx in range(3):  # neighbour (y+dy-1, x+dx-1), periodic
            nb_BC = torch.roll(state_BHW, shifts=(1 - dy, 1 - dx), dims=(1, 2)).reshape(b, h * w)
            table_BSC1 = w1_BKSC[:, 3 * dy + dx]
            hid_BCC1 += torch.gather(table_BSC1, 1, nb_BC[..., None].expand(b, h * w, c1))
    pre_BCJ = (hid_BCC1[..., :, None] * w2_BCJ[:, None]).sum(dim=-2) + spec.hidden_round
    act_BCJ = pre_BCJ.clamp_min(0) >> spec.hidden_shift  # = (relu(sum) + round) >> shift: rounded half up
    return (act_BCJ[..., :, None] * w3_BJS[:, None]).sum(dim=-2)


def step_reference(state_BHW, w1_BKSC, w2_BCJ, w3_BJS, keys_B, step: int, spec: RolloutSpec, table):
    """One synchronous update of every cell (int64 in, int64 out)."""
    b, h, w = state_BHW.shape
    logits_BCS = logits_reference(state_BHW, w1_BKSC, w2_BCJ, w3_BJS, spec)
    now_BC = state_BHW.reshape(b, h * w)
    if spec.beta_q:
        logits_BCS += spec.beta_q * torch.nn.functional.one_hot(now_BC, spec.states)
    if spec.noise_span:
        logits_BCS += gumbel_noise(keys_B, step, spec, table)
    return logits_BCS.argmax(dim=-1).reshape(b, h, w)  # torch.argmax returns the first maximum: lowest state


def rollout_reference(w1_RKSC, w2_RCJ, w3_RJS, rule_B, states_BHW, keys_B, spec: RolloutSpec):
    """Roll out B trajectories; returns frames (B, F, H, W) uint8 on the inputs' device.

    `rule_B` maps each trajectory to its rule (index into the R tables); `keys_B` are uint32 noise keys
    held in any integer dtype.
    """
    device = states_BHW.device
    w1, w2, w3 = (t.to(device=device, dtype=torch.int64)[rule_B.long()] for t in (w1_RKSC, w2_RCJ, w3_RJS))
    keys = keys_B.to(device=device, dtype=torch.int64) & MASK32
    table = torch.as_tensor(spec.noise_table, device=device, dtype=torch.int64)
    state = states_BHW.to(torch.int64)
    frames = torch.empty(state.shape[0], spec.frames, spec.height, spec.width, dtype=torch.uint8, device=device)
    for t in range(spec.steps + 1):
        if spec.is_frame_step(t):
            frames[:, spec.frame_index(t)] = state.to(torch.uint8)
        if t < spec.steps:
            state = step_reference(state, w1, w2, w3, keys, t, spec, table)
    return frames


def tokenize_reference(frames_BFHW: torch.Tensor, spec: RolloutSpec) -> torch.Tensor:
    """Frames -> token sequences (B, F * (P + 2)) int32 with `<grid>`/`</grid>` around every frame."""
    b, f, h, w = frames_BFHW.shape
    p, n = spec.patch, spec.states
    digits = n ** torch.arange(p * p, device=frames_BFHW.device, dtype=torch.int64)
    blocks = frames_BFHW.to(torch.int64).reshape(b, f, h // p, p, w // p, p).permute(0, 1, 2, 4, 3, 5)
    ids = (blocks.reshape(b, f, -1, p * p) * digits).sum(dim=-1)
    grid_tok = n ** (p * p)
    open_ = torch.full((b, f, 1), grid_tok, dtype=torch.int64, device=ids.device)
    return torch.cat([open_, ids, open_ + 1], dim=-1).reshape(b, -1).to(torch.int32)


def rollout_tokens_reference(w1_RKSC, w2_RCJ, w3_RJS, rule_B, states_BHW, keys_B, spec: RolloutSpec):
    """Rollout then patch tokens: (B, L) int32. The Triton kernel fuses exactly this."""
    return tokenize_reference(rollout_reference(w1_RKSC, w2_RCJ, w3_RJS, rule_B, states_BHW, keys_B, spec), spec)
