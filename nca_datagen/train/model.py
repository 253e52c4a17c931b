"""A small Llama-style decoder: RMSNorm, RoPE (theta 1e4), SwiGLU, causal SDPA, untied embedding and head.

The paper's model is this architecture at 24 layers x 2048 wide. Named sizes run from a CPU toy to a
~100M-parameter GPU model; the vocabulary comes from the data (NCA: states^(patch^2) + 2, text: 257 bytes
and one separator), so the sizes name the blocks only. RoPE has no learned parameters, so the same weights
run at any context length: pre-pre-training at 1024 and language training at another length is fine.

Shape legend: B batch, T tokens, D width, H heads, K head dim, V vocabulary, F MLP hidden.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 10002  # token ids 0..V-1 (paper NCA: 10^4 patch ids + <grid>, </grid>)
    depth: int = 2  # decoder blocks (paper: 24)
    width: int = 64  # residual width D (paper: 2048)
    heads: int = 2  # attention heads; head dim = width / heads (paper: 32 heads of 64)
    mlp_hidden: int = 192  # SwiGLU hidden width F (paper: 8192 = 4 D; Llama uses ~8/3 D)
    context: int = 1024  # longest sequence the RoPE table is precomputed for (grows on demand)
    rope_theta: float = 1e4  # RoPE base (paper: 1e4)
    norm_eps: float = 1e-5  # RMSNorm epsilon

    def __post_init__(self):
        if self.width % self.heads or (self.width // self.heads) % 2:
            raise ValueError(f"width={self.width} must split into heads={self.heads} of an even head dim; "
                             f"choose a width that is a multiple of 2 x heads")
        for name in ("vocab_size", "depth", "width", "heads", "mlp_hidden", "context"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    def to_dict(self) -> dict:
        return asdict(self)


# Named block sizes (vocab and context come from the data). Block parameters are 4 D^2 + 3 D F per layer.
SIZES = {
    "tiny": dict(depth=2, width=64, heads=2, mlp_hidden=192),  # ~0.1M block params: tests, CPU smoke runs
    "mini": dict(depth=4, width=128, heads=4, mlp_hidden=384),  # ~0.85M: CPU experiments
    "small": dict(depth=6, width=256, heads=4, mlp_hidden=768),  # ~5M: the largest CPU comparison
    "medium": dict(depth=8, width=512, heads=8, mlp_hidden=1536),  # ~27M: a small GPU
    "base": dict(depth=12, width=768, heads=12, mlp_hidden=2048),  # ~85M blocks, ~100M with the NCA vocab
    "paper": dict(depth=24, width=2048, heads=32, mlp_hidden=8192),  # the paper's model, ~1.2B blocks
}


def model_config(size: str, vocab_size: int, context: int) -> ModelConfig:
    if size not in SIZES:
        raise ValueError(f"model size {size!r}: choose one of {', '.join(SIZES)}")
    return ModelConfig(vocab_size=vocab_size, context=context, **SIZES[size])


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x_f = x.float()
        x_f = x_f * torch.rsqrt(x_f.pow(2).mean(-1, keepdim=True) + self.eps)
        return x_f.type_as(x) * self.weight


def rope_table(head_dim: int, length: int, theta: float, device=None):
    """cos, sin of shape (T, K/2) for positions 0..length-1 (fp32)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles_TK = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    return angles_TK.cos(), angles_TK.sin()


def apply_rope(x_BHTK, cos, sin):
    """Rotate each pair (x[i], x[i + K/2]) by a position-dependent angle (the GPT-NeoX / HF Llama layout)."""
    x1, x2 = x_BHTK.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.type_as(x_BHTK)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.wq = nn.Linear(cfg.width, cfg.width, bias=False)
        self.wk = nn.Linear(cfg.width, cfg.width, bias=False)
        self.wv = nn.Linear(cfg.width, cfg.width, bias=False)
        self.wo = nn.Linear(cfg.width, cfg.width, bias=False)

    def forward(self, x_BTD, cos, sin):
        b, t, d = x_BTD.shape
        q, k, v = (w(x_BTD).view(b, t, self.heads, self.head_dim).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y_BHTK = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(y_BHTK.transpose(1, 2).reshape(b, t, d))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w_gate = nn.Linear(cfg.width, cfg.mlp_hidden, bias=False)
        self.w_up = nn.Linear(cfg.width, cfg.mlp_hidden, bias=False)
        self.w_down = nn.Linear(cfg.mlp_hidden, cfg.width, bias=False)

    def forward(self, x_BTD):
        return self.w_down(F.silu(self.w_gate(x_BTD)) * self.w_up(x_BTD))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x_BTD, cos, sin):
        x_BTD = x_BTD + self.attn(self.attn_norm(x_BTD), cos, sin)
        return x_BTD + self.mlp(self.mlp_norm(x_BTD))


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.head = nn.Linear(cfg.width, cfg.vocab_size, bias=False)
        cos, sin = rope_table(cfg.head_dim, cfg.context, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # derived, so not in the state dict
        self.register_buffer("rope_sin", sin, persistent=False)

    def reset_parameters(self, generator: torch.Generator | None = None):
        """GPT-2 / Llama init: N(0, 0.02) everywhere, residual output projections scaled by 1/sqrt(2 depth),
        norms at one. Drawn from `generator` in module order so a seed fixes every tensor."""
        std = 0.02
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                with torch.no_grad():
                    p.fill_(1.0)
                continue
            scale = 1 / math.sqrt(2 * self.cfg.depth) if name.endswith(("wo.weight", "w_down.weight")) else 1.0
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=generator) * std * scale)

    def forward(self, idx_BT, labels_BT=None):
        """Logits (B, T, V); with labels, the mean cross-entropy over targets != -100 instead."""
        t = idx_BT.shape[1]
        if t > self.rope_cos.shape[0]:  # longer than the table: extend it (RoPE itself has no length limit)
            cos, sin = rope_table(self.cfg.head_dim, t, self.cfg.rope_theta, device=idx_BT.device)
        else:
            cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        x_BTD = self.embed(idx_BT)
        for block in self.blocks:
            x_BTD = block(x_BTD, cos, sin)
        logits_BTV = self.head(self.norm(x_BTD))
        if labels_BT is None:
            return logits_BTV
        return F.cross_entropy(logits_BTV.float().view(-1, logits_BTV.shape[-1]), labels_BT.reshape(-1),
                               ignore_index=-100)


def build_model(cfg: ModelConfig, seed: int = 0) -> Decoder:
    """A freshly initialised decoder on the CPU; the same (cfg, seed) always gives the same weights."""
    model = Decoder(cfg)
    model.reset_parameters(torch.Generator().manual_seed(seed))
    return model


def count_params(model: nn.Module, embeddings: bool = True) -> int:
    """Parameters, with or without the token embedding and output head."""
    return sum(p.numel() for n, p in model.named_parameters() if embeddings or not n.startswith(("embed.", "head.")))


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3 x forward): 6 N for the matmuls, N counting every
    weight matrix except the embedding lookup, plus the attention scores and weighted sum,
    6 x 2 x depth x T x D (causal masking is not discounted, as in the PaLM / nanoGPT MFU convention)."""
    n = cfg.depth * (4 * cfg.width**2 + 3 * cfg.width * cfg.mlp_hidden) + cfg.width * cfg.vocab_size
    return 6 * n + 12 * cfg.depth * seq_len * cfg.width
