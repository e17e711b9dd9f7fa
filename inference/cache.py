"""The KV cache: preallocated keys and values for a batch of sessions, in frame blocks.

Layout: `k`, `k_rot`, `v` are (layers, batch, kv_heads, slots, head_dim). The first
`blocks * L` slots hold frame blocks (L = N + A tokens: one frame and the action taken at it);
the last `scratch` slots hold the keys of tokens that are attended to in one forward but never
kept (a block-diffusion frame being unmasked, a diagonal decoder's stand-ins).

Bounded memory forever: a session keeps `sink` blocks (its first frames, never evicted) and a
rolling window of the most recent `blocks - sink` blocks; starting a block when all are in use
evicts the oldest non-sink block.

Positions never grow. A block's *logical* position is its rank in the session's window (sinks
first, then the window from oldest to newest) times L, plus the slot, so frame 100,000 sees the
same window-relative positions as frame 10, the positions the model was trained on. Keys are
stored unrotated (`k`) and, for attention, rotated by their logical position (`k_rot`). When
the window rolls, every logical position shifts, and `k_rot` is recomputed from `k` for that
session: one elementwise pass per frame, exact, with no error that builds up over time.

Use: before each forward, `prepare(rows, positions_BT, persist_BT, new_mask_BTT)`; the model's
attention layers then call `update(layer, k_BHTD, v_BHTD)`, which writes the new keys (kept
ones into the block their logical position names, the others into scratch) and returns the
cache's keys, values and the attention mask for this forward.
"""

from __future__ import annotations

import torch

from worldsim.model import ModelConfig, apply_rope, rope_freqs


class KVCache:
    def __init__(self, cfg: ModelConfig, batch: int, blocks: int, sink: int = 0,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 scratch: int | None = None):
        if not 0 <= sink < blocks:
            raise ValueError(f"need 0 <= sink ({sink}) < blocks ({blocks})")
        self.cfg, self.batch, self.blocks, self.sink = cfg, batch, blocks, sink
        self.L = cfg.block_len
        self.block_slots = blocks * self.L
        self.scratch = cfg.tokens_per_frame if scratch is None else scratch
        self.slots = self.block_slots + self.scratch
        shape = (cfg.n_layers, batch, cfg.n_kv_heads, self.slots, cfg.head_dim)
        self.device = torch.device(device)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # unrotated
        self.k_rot = torch.zeros(shape, device=device, dtype=dtype)  # rotated, for attention
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        # Per session: the physical block of each logical block, in logical order (-1: none).
        self.order = torch.full((batch, blocks), -1, dtype=torch.long)
        self.count = torch.zeros(batch, dtype=torch.long)  # blocks in use
        self.filled = torch.zeros((batch, self.slots), dtype=torch.bool, device=device)
        self.frames_seen = torch.zeros(batch, dtype=torch.long)  # blocks ever started
        self._plan: dict | None = None

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.k_rot, self.v))

    # -- session bookkeeping -----------------------------------------------------------------
    def reset(self, rows: list[int] | None = None) -> None:
        rows = list(range(self.batch)) if rows is None else rows
        self.order[rows] = -1
        self.count[rows] = 0
        self.filled[rows] = False
        self.frames_seen[rows] = 0

    def new_block(self, rows: list[int]) -> None:
        """Start a block for each row, evicting its oldest non-sink block if all are in use."""
        rolled = []
        for r in rows:
            n = int(self.count[r])
            if n == self.blocks:
                victim = int(self.order[r, self.sink])
                self.filled[r, victim * self.L:(victim + 1) * self.L] = False
                rest = self.order[r, self.sink + 1:].clone()
                self.order[r, self.sink:-1] = rest
                self.order[r, -1] = victim
                rolled.append(r)
            else:
                used = set(self.order[r, :n].tolist())
                free = next(p for p in range(self.blocks) if p not in used)
                self.order[r, n] = free
                self.count[r] = n + 1
            self.frames_seen[r] += 1
        if rolled:
            self._rerotate(rolled)

    def current_block(self, rows: list[int]) -> torch.Tensor:
        """Logical index of each row's newest block: (R,)."""
        return self.count[rows] - 1

    def slot_positions(self, rows: list[int]) -> torch.Tensor:
        """Logical position of every block slot: (R, blocks * L); -1 where no block lives."""
        inv = torch.full((len(rows), self.blocks), -1, dtype=torch.long)
        for i, r in enumerate(rows):
            n = int(self.count[r])
            inv[i, self.order[r, :n]] = torch.arange(n)
        base = inv[:, :, None] * self.L + torch.arange(self.L)  # (R, blocks, L)
        return torch.where(inv[:, :, None] >= 0, base, -1).flatten(1)

    def _rerotate(self, rows: list[int]) -> None:
        """Recompute the rotated keys of these rows from the unrotated ones (positions moved)."""
        pos = self.slot_positions(rows).clamp_min(0).to(self.device)  # (R, S_blocks)
        freqs = rope_freqs(pos, self.cfg.head_dim, self.cfg.rope_theta)  # (R, 1, S, D/2)
        idx = torch.as_tensor(rows, device=self.device)
        s = self.block_slots
        k = self.k[:, idx, :, :s]  # (layers, R, H, S, D)
        self.k_rot[:, idx, :, :s] = apply_rope(k, freqs[None])

    # -- one forward -------------------------------------------------------------------------
    def prepare(self, rows: list[int], positions_BT: torch.Tensor, persist_BT: torch.Tensor,
                new_mask_BTT: torch.Tensor) -> None:
        """Plan the next forward for sessions `rows`, with new tokens at logical positions.

        persist_BT: which new tokens to keep in their blocks (the rest go to scratch slots).
        new_mask_BTT: (B or 1, T, T) which new tokens may see which (True = attend).
        Kept slots from earlier forwards are visible to a query unless at a later position."""
        cfg, dev = self.cfg, self.device
        R, T = positions_BT.shape
        persist = persist_BT.cpu().expand(R, T)
        if int((~persist).sum(1).max()) > self.scratch:
            raise RuntimeError(f"more than {self.scratch} scratch tokens in one forward")
        pos_cpu = positions_BT.cpu()
        row_t = torch.as_tensor(rows, dtype=torch.long)
        # Each new token's slot: its block slot if kept, else the next scratch slot.
        blk, off = pos_cpu // self.L, pos_cpu % self.L
        if bool((persist & (blk >= self.count[row_t][:, None])).any()):
            raise RuntimeError("a kept token's block was not started (call new_block first)")
        phys = self.order[row_t[:, None].expand(R, T), blk.clamp(0, self.blocks - 1)] * self.L + off
        scratch = self.block_slots + (~persist).long().cumsum(1) - 1
        slot = torch.where(persist, phys, scratch)  # (R, T)
        slot_pos = torch.cat([self.slot_positions(rows),
                              torch.full((R, self.scratch), -1, dtype=torch.long)], 1).to(dev)
        pos = positions_BT.to(dev)
        filled = self.filled[row_t.to(dev)]  # (R, S): kept before this forward
        mask = filled[:, None, :] & (slot_pos[:, None, :] <= pos[:, :, None])  # (R, T, S)
        slot_d = slot.to(dev)
        new_mask = new_mask_BTT.to(dev).expand(R, T, T)
        mask.scatter_(2, slot_d[:, None, :].expand(R, T, T), new_mask)
        freqs = rope_freqs(pos, cfg.head_dim, cfg.rope_theta)
        full = rows == list(range(self.batch))
        rows_d = row_t.to(dev)
        self.filled[rows_d[:, None].expand(R, T)[persist.to(dev)], slot_d[persist.to(dev)]] = True
        # An additive mask, made once here: SDPA would otherwise convert a boolean mask in
        # every layer.
        bias = torch.zeros(mask.shape, dtype=self.k.dtype, device=dev).masked_fill_(~mask, float("-inf"))
        self._plan = {"rows": slice(None) if full else rows_d, "mask": bias[:, None],
                      "freqs": freqs, "b_idx": rows_d[:, None].expand(R, T).reshape(-1),
                      "s_idx": slot_d.reshape(-1)}

    def rope_new(self) -> torch.Tensor:
        """Rotations for the new tokens (the model rotates its queries with these)."""
        assert self._plan is not None, "call prepare() before the forward"
        return self._plan["freqs"]

    def update(self, layer: int, k_BHTD: torch.Tensor, v_BHTD: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """New unrotated keys and values -> (rotated keys (B,H,S,D), values, mask (B,1,T,S))."""
        p = self._plan
        assert p is not None, "call prepare() before the forward"
        b_idx, s_idx = p["b_idx"], p["s_idx"]
        k_rot = apply_rope(k_BHTD, p["freqs"])
        flat = lambda t: t.transpose(1, 2).flatten(0, 1).to(self.k.dtype)  # (B*T, H, D)
        self.k[layer][b_idx, :, s_idx] = flat(k_BHTD)
        self.k_rot[layer][b_idx, :, s_idx] = flat(k_rot)
        self.v[layer][b_idx, :, s_idx] = flat(v_BHTD)
        rows = p["rows"]
        return self.k_rot[layer][rows], self.v[layer][rows], p["mask"]
