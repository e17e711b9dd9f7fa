"""The image tokenizer: a convolutional VQ autoencoder, frames uint8 (B, H, W, 3) <-> codes (B, N).

Encoder: a space-to-depth patch embedding (each p x p patch becomes one position, default p=8),
then residual conv blocks at the token grid, then a projection to a low-dimensional code space.
Decoder: the mirror, ending in depth-to-space back to pixels. At 72x72 with p=8 the grid is
9x9 = 81 tokens, and each token is exactly one Crafter tile. Working at the token grid instead
of at full resolution costs about a fifth of the compute per image, which is what lets a
tokenizer train on a 2-core CPU.

Quantiser: an EMA codebook (k-means-like updates, no codebook gradient) in a low-dimensional
factorised space (codes of `code_dim`, 32 by default, while the conv trunk is wider), with
dead-code restarts. Why this one:
- EMA updates converge faster and more stably than a gradient-trained codebook, which matters
  when the whole training budget is minutes;
- the low-dimensional lookup makes nearest-neighbour search cheap and spreads codes better;
- restarts move any code whose running usage falls below a threshold onto a random encoder
  output of the current batch, so codes do not die and usage stays high (measured as the
  fraction of codes used on held-out frames). FSQ would need no restarts, but its fixed grid
  wastes codes on a data set as peaked as pixel-art tiles.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from worldsim.config import strict_from_dict


@dataclass
class ImageTokenizerConfig:
    height: int = 72
    width: int = 72
    patch: int = 8  # downsampling factor: one token per patch x patch pixels
    channels: int = 128  # width of the conv trunk at the token grid
    enc_blocks: int = 2
    dec_blocks: int = 4
    codebook_size: int = 1024
    code_dim: int = 32  # the factorised lookup space
    ema_decay: float = 0.99
    commitment: float = 0.25
    dead_threshold: float = 0.25  # EMA uses per batch under which a code is restarted

    def __post_init__(self) -> None:
        if self.height % self.patch or self.width % self.patch:
            raise ValueError(f"frame size {self.height}x{self.width} is not a multiple of patch {self.patch}")

    @property
    def grid(self) -> tuple[int, int]:
        return self.height // self.patch, self.width // self.patch

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ImageTokenizerConfig":
        return strict_from_dict(cls, d, "image tokenizer")


PRESETS: dict[str, ImageTokenizerConfig] = {
    # For tests: a few thousand parameters, runs in milliseconds.
    "tiny": ImageTokenizerConfig(height=32, width=32, patch=8, channels=32, enc_blocks=1,
                                 dec_blocks=1, codebook_size=64, code_dim=8),
    # The default Crafter tokenizer: 72x72 -> 9x9 tokens, 1024 codes.
    "crafter": ImageTokenizerConfig(),
    # MineWorld's token shape (DESIGN.md): 224x384 MineRL frames -> 14x24 = 336 tokens of 8192
    # codes, which the `mineworld-300m` model preset reads.
    "mineworld": ImageTokenizerConfig(height=224, width=384, patch=16, codebook_size=8192),
}


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.norm = nn.GroupNorm(8, c)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return x_BCHW + self.conv2(F.gelu(self.conv1(F.gelu(self.norm(x_BCHW)))))


class EMAQuantizer(nn.Module):
    """Nearest-code lookup with EMA codebook updates and dead-code restarts."""

    def __init__(self, k: int, d: int, decay: float, dead_threshold: float):
        super().__init__()
        self.k, self.d, self.decay, self.dead_threshold = k, d, decay, dead_threshold
        embed = torch.randn(k, d) * 0.1
        self.register_buffer("embed", embed)  # (K, D)
        self.register_buffer("cluster_size", torch.ones(k))  # (K,) EMA uses per batch
        self.register_buffer("embed_sum", embed.clone())  # (K, D) EMA of summed assignments

    def codes(self, z_MD: torch.Tensor) -> torch.Tensor:
        # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2; the first term does not change the argmin.
        dist_MK = self.embed.pow(2).sum(1)[None, :] - 2 * z_MD @ self.embed.t()
        return dist_MK.argmin(1)

    def forward(self, z_MD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx_M = self.codes(z_MD.detach().float())
        if self.training:
            self._ema_update(z_MD.detach().float(), idx_M)
        return F.embedding(idx_M, self.embed).to(z_MD.dtype), idx_M

    @torch.no_grad()
    def _ema_update(self, z_MD: torch.Tensor, idx_M: torch.Tensor) -> None:
        onehot_MK = F.one_hot(idx_M, self.k).type_as(z_MD)
        counts_K = onehot_MK.sum(0)
        sums_KD = onehot_MK.t() @ z_MD
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts_K)
            torch.distributed.all_reduce(sums_KD)
        self.cluster_size.mul_(self.decay).add_(counts_K, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums_KD, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        # Laplace smoothing keeps rarely used codes from dividing by ~0.
        size_K = (self.cluster_size + 1e-5) / (n + self.k * 1e-5) * n
        self.embed.copy_(self.embed_sum / size_K[:, None])
        dead_K = self.cluster_size < self.dead_threshold
        n_dead = int(dead_K.sum())
        if n_dead:
            pick = torch.randint(0, z_MD.shape[0], (n_dead,), device=z_MD.device)
            fresh = z_MD[pick] + 1e-3 * torch.randn_like(z_MD[pick])
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.broadcast(fresh, 0)  # every rank restarts to the same codes
            self.embed[dead_K] = fresh
            # A restarted code gets a grace period before it can be judged dead again.
            self.cluster_size[dead_K] = 1.0
            self.embed_sum[dead_K] = fresh


class ImageTokenizer(nn.Module):
    """`encode(frames_BHWC uint8) -> tokens_BN`, `decode(tokens_BN) -> frames_BHWC uint8`."""

    def __init__(self, cfg: ImageTokenizerConfig):
        super().__init__()
        self.cfg = cfg
        p, c = cfg.patch, cfg.channels
        patch_dim = 3 * p * p
        self.enc_in = nn.Conv2d(patch_dim, c, 1)
        self.enc_blocks = nn.Sequential(*[ResBlock(c) for _ in range(cfg.enc_blocks)])
        self.enc_out = nn.Sequential(nn.GroupNorm(8, c), nn.GELU(), nn.Conv2d(c, cfg.code_dim, 1))
        self.quant = EMAQuantizer(cfg.codebook_size, cfg.code_dim, cfg.ema_decay, cfg.dead_threshold)
        self.dec_in = nn.Conv2d(cfg.code_dim, c, 1)
        self.dec_blocks = nn.Sequential(*[ResBlock(c) for _ in range(cfg.dec_blocks)])
        self.dec_out = nn.Sequential(nn.GroupNorm(8, c), nn.GELU(), nn.Conv2d(c, patch_dim, 1))

    # -- tensors in [0, 1], channels first --------------------------------------------------
    def _embed(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        z = self.enc_blocks(self.enc_in(F.pixel_unshuffle(x_BCHW * 2 - 1, self.cfg.patch)))
        return self.enc_out(z)  # (B, D, h, w)

    def _reconstruct(self, q_BDhw: torch.Tensor) -> torch.Tensor:
        y = self.dec_out(self.dec_blocks(self.dec_in(q_BDhw)))
        return (F.pixel_shuffle(y, self.cfg.patch) + 1) / 2  # (B, 3, H, W)

    def forward(self, x_BCHW: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training pass on images in [0, 1]: reconstruction, losses and codes."""
        z_BDhw = self._embed(x_BCHW)
        b, d, h, w = z_BDhw.shape
        z_MD = z_BDhw.permute(0, 2, 3, 1).reshape(-1, d)
        q_MD, idx_M = self.quant(z_MD)
        commit = F.mse_loss(z_MD, q_MD.detach())
        q_MD = z_MD + (q_MD - z_MD).detach()  # straight-through gradient to the encoder
        q_BDhw = q_MD.reshape(b, h, w, d).permute(0, 3, 1, 2)
        recon = self._reconstruct(q_BDhw)
        mse = F.mse_loss(recon, x_BCHW)
        return {"recon": recon, "mse": mse, "commit": commit,
                "loss": mse + self.cfg.commitment * commit, "codes": idx_M.reshape(b, h * w)}

    # -- public API: uint8 frames <-> int64 tokens -------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.quant.embed.device

    @torch.no_grad()
    def encode(self, frames_BHWC: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 frames (B, H, W, 3) -> int64 tokens (B, N), N = (H/p)*(W/p), row-major."""
        x = _to_float_bchw(frames_BHWC, self.device)
        if tuple(x.shape[-2:]) != (self.cfg.height, self.cfg.width):
            raise ValueError(f"frames must be {self.cfg.height}x{self.cfg.width}, got "
                             f"{x.shape[-2]}x{x.shape[-1]}")
        if not len(x):  # pixel_unshuffle passes an empty batch through unchanged: the conv then fails
            return torch.zeros(0, self.cfg.tokens_per_frame, dtype=torch.long, device=self.device)
        z_BDhw = self._embed(x)
        b, d, h, w = z_BDhw.shape
        return self.quant.codes(z_BDhw.permute(0, 2, 3, 1).reshape(-1, d).float()).reshape(b, h * w)

    @torch.no_grad()
    def decode(self, tokens_BN: torch.Tensor | np.ndarray) -> torch.Tensor:
        """int tokens (B, N) -> uint8 frames (B, H, W, 3)."""
        tokens = torch.as_tensor(np.asarray(tokens_BN) if isinstance(tokens_BN, np.ndarray) else tokens_BN)
        tokens = tokens.to(self.device, torch.long)
        h, w = self.cfg.grid
        if tokens.ndim != 2 or tokens.shape[1] != h * w:
            raise ValueError(f"tokens must have shape (B, {h * w}), got {tuple(tokens.shape)}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.cfg.codebook_size):
            raise ValueError(f"image tokens must lie in [0, {self.cfg.codebook_size})")
        q_BhwD = F.embedding(tokens, self.quant.embed).reshape(-1, h, w, self.cfg.code_dim)
        x = self._reconstruct(q_BhwD.permute(0, 3, 1, 2).to(self.dec_in.weight.dtype))
        return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _to_float_bchw(frames_BHWC: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(frames_BHWC)) if isinstance(frames_BHWC, np.ndarray) else frames_BHWC
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (B, H, W, 3), got {t.dtype} {tuple(t.shape)}")
    return t.to(device).permute(0, 3, 1, 2).float().div_(255)


# -- metrics -------------------------------------------------------------------------------
# PSNR, SSIM and code statistics live in worldsim.metrics, the one home of image and token
# metrics; kept importable here.
from worldsim.metrics import code_stats, psnr, ssim  # noqa: E402,F401
