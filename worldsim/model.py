"""The world model: a LLaMA-style decoder over interleaved frame and action tokens. Layers only;
sampling lives in `worldsim.inference`.

Sequence layout (DESIGN.md): frame t is a block `[N image tokens][A action tokens]` of length
L = N + A; image codes take ids [0, K), action ids follow, MASK (block diffusion) is last.
A token's position is `frame * L + slot`. Rotary positions are 1-D (`rope="1d"`, rotated by
the position itself) or factorised (`rope="3d"`: a quarter of each head's frequency pairs turn
with the frame, three eighths with the token's grid row, three eighths with its column; action
tokens sit on a row below the grid). Factorised positions make a one-tile scroll the same
relative offset everywhere in the frame, across row ends included.

Blocks: RMSNorm pre-norm, grouped-query attention through `scaled_dot_product_attention` with
rotary positions, SwiGLU MLP, no biases, an untied output head.

Two optional inputs, both off for MineWorld-shaped models so their checkpoints load unchanged:
- `slot_embed`: a learned embedding of the token's slot in its block (`position % L`), which
  gives the model the 2-D place of an image token that 1-D rotary positions only imply;
- `prev_embed`: an embedding of the previous frame's token at the slot being predicted (id K
  means "none"). Most of a frame repeats the last one, so this gives every prediction a direct
  view of what was there.

`forward(tokens_BT, positions_BT, cache=None, mask=None, prev_BT=None) -> logits_BTV`.
Without a cache, `mask` is a boolean (T, T) or (B, 1, T, T), True where attention is allowed
(or pass `causal=True`). With a cache (`worldsim.inference.cache.KVCache`, prepared by the
decoder for this forward), the cache rotates keys, stores the new ones and supplies the mask.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from worldsim.config import strict_from_dict

OBJECTIVES = ("ar", "block_diffusion")
ROPES = ("1d", "3d")


@dataclass
class ModelConfig:
    codebook_size: int = 1024  # K: image ids are [0, K)
    action_ids: int = 17  # action ids are [K, K + action_ids)
    tokens_per_frame: int = 81  # N
    action_tokens: int = 1  # A
    grid: tuple[int, int] = (9, 9)  # rows x cols of a frame's tokens, rows * cols == N
    frames: int = 8  # frames per training window; the context the model was trained on
    dim: int = 256
    n_layers: int = 6
    n_heads: int = 4
    n_kv_heads: int = 4
    ffn_dim: int = 768
    rope_theta: float = 10000.0
    rope: str = "1d"  # "1d" | "3d" (frame, row, column), see the module docstring
    norm_eps: float = 1e-5
    objective: str = "ar"  # "ar" | "block_diffusion"
    slot_embed: bool = False
    prev_embed: bool = False
    vocab_size: int = 0  # 0: K + action_ids + 1 (MASK); set explicitly for imported checkpoints

    def __post_init__(self) -> None:
        self.grid = tuple(self.grid)  # JSON gives lists
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.rope not in ROPES:
            raise ValueError(f"rope must be one of {ROPES}, got {self.rope!r}")
        if self.rope == "3d" and self.head_dim % 16:
            raise ValueError(f"rope '3d' needs a head dimension divisible by 16, got {self.head_dim}")
        if self.grid[0] * self.grid[1] != self.tokens_per_frame:
            raise ValueError(f"grid {self.grid} does not hold {self.tokens_per_frame} tokens")
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError("dim must divide by n_heads and n_heads by n_kv_heads")
        if self.head_dim % 2:
            raise ValueError(f"the head dimension (dim / n_heads) must be even for rotary positions, "
                             f"got {self.head_dim}")
        if self.vocab_size == 0:
            self.vocab_size = self.codebook_size + self.action_ids + 1
        if self.vocab_size < self.codebook_size + self.action_ids + 1:
            raise ValueError("vocab_size must hold the image codes, the action ids and MASK")

    @property
    def block_len(self) -> int:  # L
        return self.tokens_per_frame + self.action_tokens

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def mask_id(self) -> int:
        return self.vocab_size - 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["grid"] = list(self.grid)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        return strict_from_dict(cls, d, "model")

    def num_params(self) -> int:
        d, h = self.dim, self.head_dim
        attn = d * (self.n_heads * h) * 2 + d * (self.n_kv_heads * h) * 2
        mlp = 3 * d * self.ffn_dim
        per_layer = attn + mlp + 2 * d
        extra = (self.block_len * d if self.slot_embed else 0) + \
                ((self.codebook_size + 1) * d if self.prev_embed else 0)
        return 2 * self.vocab_size * d + self.n_layers * per_layer + d + extra


PRESETS: dict[str, dict[str, Any]] = {
    # For tests: milliseconds per step.
    "tiny": dict(codebook_size=64, action_ids=17, tokens_per_frame=16, action_tokens=1,
                 grid=(4, 4), frames=4, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                 slot_embed=True, prev_embed=True),
    # The default Crafter model: 72x72 frames, 9x9 tokens of a 1024-code tokenizer, 1 action token.
    "crafter": dict(codebook_size=1024, action_ids=17, tokens_per_frame=81, action_tokens=1,
                    grid=(9, 9), frames=8, dim=256, n_layers=6, n_heads=4, n_kv_heads=4,
                    ffn_dim=768, slot_embed=True, prev_embed=True),
    # MineWorld's 300M shape: 224x384 frames as 14x24 tokens of an 8192-code tokenizer, 11 action
    # tokens, 16 frames of 347 tokens; 1-D rotary positions only.
    "mineworld-300m": dict(codebook_size=8192, action_ids=68, tokens_per_frame=336,
                           action_tokens=11, grid=(14, 24), frames=16, dim=1024, n_layers=20,
                           n_heads=16, n_kv_heads=4, ffn_dim=4096, vocab_size=8262),
}


def preset_config(name: str, **overrides: Any) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One fused op; reduced-precision inputs are normalised in float32 inside it.
        return F.rms_norm(x, x.shape[-1:], self.weight, self.eps)


def rope_freqs(positions_BT: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """Unit complex rotations e^(i * pos * theta^(-2j/D)), (B, T, 1, head_dim/2), in float32;
    the singleton broadcasts over heads."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions_BT.device,
                                        dtype=torch.float32) / head_dim))
    ang = positions_BT.float()[..., None] * inv  # (B, T, D/2)
    return torch.polar(torch.ones_like(ang), ang)[:, :, None]


def position_freqs(cfg: ModelConfig, positions_BT: torch.Tensor) -> torch.Tensor:
    """The rotations of positions `frame * L + slot` under the model's rotary scheme, (B, T, 1,
    head_dim/2). "3d" splits the frequency pairs into (frame, row, column) groups, each with its
    own spectrum over its share of the head."""
    if cfg.rope == "1d":
        return rope_freqs(positions_BT, cfg.head_dim, cfg.rope_theta)
    L, N, cols = cfg.block_len, cfg.tokens_per_frame, cfg.grid[1]
    frame, slot = positions_BT // L, positions_BT % L
    image = slot < N
    row = torch.where(image, slot // cols, cfg.grid[0])  # actions: a row below the grid
    col = torch.where(image, slot % cols, slot - N)
    d = cfg.head_dim
    dt, dr = d // 4, 3 * d // 8
    return torch.cat([rope_freqs(frame, dt, cfg.rope_theta), rope_freqs(row, dr, cfg.rope_theta),
                      rope_freqs(col, d - dt - dr, cfg.rope_theta)], dim=-1)


def apply_rope(x_BTHD: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) by the position's angle (LLaMA's interleaved layout), as one
    complex multiplication in float32 (few kernels: this runs for every layer of every decoding
    pass). `x` is (..., T, H, D), `freqs` (..., T, 1, D/2); returns a new contiguous tensor."""
    xc = torch.view_as_complex(x_BTHD.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(xc * freqs).flatten(-2).to(x_BTHD.dtype)


def _fuse_on_load(parts: list[str], fused: str):
    """A load_state_dict pre-hook: checkpoints that keep the projections apart (`wq`, `wk`, `wv`)
    load into the fused weight, concatenated in that order."""
    def hook(state_dict, prefix, *args) -> None:
        keys = [f"{prefix}{p}.weight" for p in parts]
        if all(k in state_dict for k in keys):
            state_dict[f"{prefix}{fused}.weight"] = torch.cat([state_dict.pop(k) for k in keys])
    return hook


class Attention(nn.Module):
    """Queries, keys and values come from one fused projection `wqkv` = [wq; wk; wv] (one matmul
    per layer, and queries and keys are rotated together)."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wqkv = nn.Linear(cfg.dim, (cfg.n_heads + 2 * cfg.n_kv_heads) * self.hd, bias=False)
        self.wo = nn.Linear(cfg.n_heads * self.hd, cfg.dim, bias=False)
        self._register_load_state_dict_pre_hook(_fuse_on_load(["wq", "wk", "wv"], "wqkv"))

    def forward(self, x_BTC: torch.Tensor, freqs: torch.Tensor | None, cache: Any,
                mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        b, t, _ = x_BTC.shape
        H, Hkv = self.n_heads, self.n_kv
        qkv = self.wqkv(x_BTC).view(b, t, H + 2 * Hkv, self.hd)  # (B, T, heads, D)
        if cache is not None:
            # The cache's plan for this forward rotates by window-relative positions (see
            # worldsim.inference.cache).
            freqs = cache.plan.freqs
        qk = apply_rope(qkv[:, :, :H + Hkv], freqs)  # (B, T, H + Hkv, D)
        q = qk[:, :, :H].transpose(1, 2)  # (B, H, T, D)
        if cache is None:
            k, v = qk[:, :, H:].transpose(1, 2), qkv[:, :, H + Hkv:].transpose(1, 2)
        else:
            # Stores the unrotated keys and values and the rotated keys; returns the cache's
            # (B, Hkv, S, D) views and the mask over [cached ; new] tokens.
            k, v, mask = cache.update(self.layer, qkv[:, :, H:], qk[:, :, H:])
            causal = False
            # Folding pays only for a few queries (token-by-token passes: 1, or 1 + A = 12 on
            # MineWorld). Measured on one CPU thread at mineworld-300m's shape with a full window
            # (5,571 slots): 1 query 3.9x faster folded, 4 queries 4.7x, 12 to 16 even, from 24
            # on either way by turns; and folding copies the mask once per query head.
            if Hkv != H and t <= 16:
                return self.wo(_folded_attention(q, k, v, mask).transpose(1, 2).reshape(b, t, -1))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                           enable_gqa=Hkv != H)
        return self.wo(y.transpose(1, 2).reshape(b, t, -1))


def _folded_attention(q_BHTD: torch.Tensor, k_BGSD: torch.Tensor, v_BGSD: torch.Tensor,
                      mask_B1TS: torch.Tensor | None) -> torch.Tensor:
    """Grouped-query attention for a few queries (token-by-token decoding): the query heads that
    share a key head become extra queries of that head, so attention runs over the key heads
    alone. The same result; on the CPU a single query through grouped attention is some ten
    times slower than four queries through plain attention."""
    b, h, t, d = q_BHTD.shape
    g = k_BGSD.shape[1]
    q = q_BHTD.unflatten(1, (g, h // g)).flatten(2, 3)  # (B, Hkv, (H/Hkv) * T, D)
    mask = None if mask_B1TS is None else \
        mask_B1TS[:, :, None].expand(b, 1, h // g, t, mask_B1TS.shape[-1]).flatten(2, 3)
    y = F.scaled_dot_product_attention(q, k_BGSD, v_BGSD, attn_mask=mask)
    return y.unflatten(2, (h // g, t)).flatten(1, 2)  # (B, H, T, D)


class MLP(nn.Module):
    """SwiGLU; the gate and up projections are one fused weight `w13` = [w1; w3]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w13 = nn.Linear(cfg.dim, 2 * cfg.ffn_dim, bias=False)
        self.w2 = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)
        self._register_load_state_dict_pre_hook(_fuse_on_load(["w1", "w3"], "w13"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, -1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, freqs, cache, mask, causal):
        x = x + self.attn(self.attn_norm(x), freqs, cache, mask, causal)
        return x + self.mlp(self.mlp_norm(x))


class WorldModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        # Built on the meta device (a bundle being loaded), every weight is assigned from the
        # file afterwards, so no initialiser runs: drawing random values into shape-only
        # tensors does nothing, yet on meta it imports torch's compiler stack (some 800
        # modules, over a second of a server's start).
        meta = torch.empty(0).device.type == "meta"
        emb = (lambda n, d: nn.Embedding(n, d, _weight=torch.empty(n, d))) if meta else nn.Embedding
        self.tok_emb = emb(cfg.vocab_size, cfg.dim)
        self.slot_emb = emb(cfg.block_len, cfg.dim) if cfg.slot_embed else None
        self.prev_emb = emb(cfg.codebook_size + 1, cfg.dim) if cfg.prev_embed else None
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if not meta:
            self.apply(self._init)
            for name, p in self.named_parameters():
                if name.endswith("wo.weight") or name.endswith("w2.weight"):
                    # GPT-2's scaled init of residual projections keeps the stream's variance flat.
                    nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def hidden(self, tokens_BT: torch.Tensor, positions_BT: torch.Tensor, cache: Any = None,
               mask: torch.Tensor | None = None, prev_BT: torch.Tensor | None = None,
               causal: bool = False) -> torch.Tensor:
        """Final hidden states (B, T, C). `causal=True` with no mask is plain causal attention."""
        h = self.tok_emb(tokens_BT)
        if self.slot_emb is not None:
            h = h + self.slot_emb(positions_BT % self.cfg.block_len)
        if self.prev_emb is not None and prev_BT is not None:
            h = h + self.prev_emb(prev_BT)
        if mask is not None and mask.dtype == torch.bool:
            # Convert once per forward, in the dtype attention will run in; SDPA would
            # otherwise convert a boolean mask in every layer.
            dt = (torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type)
                  else h.dtype)
            mask = torch.zeros(mask.shape, dtype=dt, device=h.device).masked_fill_(~mask, float("-inf"))
        freqs = None
        if cache is None:
            freqs = position_freqs(self.cfg, positions_BT)
        for layer in self.layers:
            h = layer(h, freqs, cache, mask, causal)
        return self.norm(h)

    def head(self, h: torch.Tensor, image_only: bool = False) -> torch.Tensor:
        """Logits over the vocabulary, or over the K image codes only (what is ever sampled)."""
        if image_only:
            return F.linear(h, self.lm_head.weight[: self.cfg.codebook_size])
        return self.lm_head(h)

    def forward(self, tokens_BT: torch.Tensor, positions_BT: torch.Tensor, cache: Any = None,
                mask: torch.Tensor | None = None, prev_BT: torch.Tensor | None = None,
                causal: bool = False) -> torch.Tensor:
        return self.head(self.hidden(tokens_BT, positions_BT, cache, mask, prev_BT, causal))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
