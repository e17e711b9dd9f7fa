"""The KV cache: preallocated keys and values for a batch of sessions, in frame blocks.

Layout: `k`, `v` are (layers, batch, kv_heads, slots, head_dim) with slots = blocks * L, where
L = N + A tokens per frame block. A block holds one frame and the action taken at it.

Bounded memory forever: a session keeps `sink` blocks (its first frames, never evicted) and a
rolling window of the most recent `blocks - sink` blocks; starting a block when all are in use
evicts the oldest non-sink block.

Positions never grow: keys are stored unrotated and rotated on read by their *logical*
position, which is the block's rank in the session's current window (sinks first, then the
window oldest to newest) times L plus the slot. So frame 100,000 sees exactly the positions
frame 10 saw, the same window-relative positions the model was trained on, and rotary angles
never overflow or lose precision.

Use: before each forward, `prepare(rows, positions_BT, persist_BT, new_mask_BTT)`; the model's
attention layers then call `update(layer, k_BHTD, v_BHTD)`, which returns the rotated keys,
the values and the attention mask over [cached slots ; new tokens], and writes the new tokens
whose `persist` flag is set into the block their logical position names.
"""

from __future__ import annotations

import torch

from worldsim.model import ModelConfig, apply_rope, rope_cos_sin


class KVCache:
    def __init__(self, cfg: ModelConfig, batch: int, blocks: int, sink: int = 0,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        if not 0 <= sink < blocks:
            raise ValueError(f"need 0 <= sink ({sink}) < blocks ({blocks})")
        self.cfg, self.batch, self.blocks, self.sink = cfg, batch, blocks, sink
        self.L = cfg.block_len
        self.slots = blocks * self.L
        shape = (cfg.n_layers, batch, cfg.n_kv_heads, self.slots, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.device = torch.device(device)
        # Per session: the physical block of each logical block, in logical order (-1: none).
        self.order = torch.full((batch, blocks), -1, dtype=torch.long)
        self.count = torch.zeros(batch, dtype=torch.long)  # blocks in use
        self.filled = torch.zeros((batch, self.slots), dtype=torch.bool, device=device)
        self.frames_seen = torch.zeros(batch, dtype=torch.long)  # blocks ever started
        self._plan: dict | None = None

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2

    # -- session bookkeeping -----------------------------------------------------------------
    def reset(self, rows: list[int] | None = None) -> None:
        rows = list(range(self.batch)) if rows is None else rows
        self.order[rows] = -1
        self.count[rows] = 0
        self.filled[rows] = False
        self.frames_seen[rows] = 0

    def new_block(self, rows: list[int]) -> None:
        """Start a block for each row, evicting its oldest non-sink block if all are in use."""
        for r in rows:
            n = int(self.count[r])
            if n == self.blocks:
                victim = int(self.order[r, self.sink])
                self.filled[r, victim * self.L:(victim + 1) * self.L] = False
                rest = self.order[r, self.sink + 1:].clone()
                self.order[r, self.sink:-1] = rest
                self.order[r, -1] = victim
            else:
                used = set(self.order[r, :n].tolist())
                free = next(p for p in range(self.blocks) if p not in used)
                self.order[r, n] = free
                self.count[r] = n + 1
            self.frames_seen[r] += 1

    def rollback(self, rows: list[int], n: int = 1) -> None:
        """Drop the newest n blocks of each row (e.g. to re-dream a frame)."""
        for r in rows:
            for _ in range(min(n, int(self.count[r]))):
                c = int(self.count[r]) - 1
                p = int(self.order[r, c])
                self.filled[r, p * self.L:(p + 1) * self.L] = False
                self.order[r, c] = -1
                self.count[r] = c

    def current_block(self, rows: list[int]) -> torch.Tensor:
        """Logical index of each row's newest block: (R,)."""
        return self.count[rows] - 1

    def slot_positions(self, rows: list[int]) -> torch.Tensor:
        """Logical position of every physical slot: (R, slots); -1 where no block lives."""
        inv = torch.full((len(rows), self.blocks), -1, dtype=torch.long)
        for i, r in enumerate(rows):
            n = int(self.count[r])
            inv[i, self.order[r, :n]] = torch.arange(n)
        base = inv[:, :, None] * self.L + torch.arange(self.L)  # (R, blocks, L)
        return torch.where(inv[:, :, None] >= 0, base, -1).flatten(1)

    # -- one forward -------------------------------------------------------------------------
    def prepare(self, rows: list[int], positions_BT: torch.Tensor, persist_BT: torch.Tensor,
                new_mask_BTT: torch.Tensor) -> None:
        """Plan the next forward for sessions `rows` with new tokens at logical positions.

        persist_BT: which new tokens to write into the cache (at their logical positions).
        new_mask_BTT: (B or 1, T, T) which new tokens may see which (True = attend).
        Cached slots are visible to a query when filled and not at a later position."""
        cfg = self.cfg
        dev = self.device
        slot_pos = self.slot_positions(rows).to(dev)  # (R, S)
        filled = self.filled[rows]  # (R, S)
        pos = positions_BT.to(dev)
        cache_mask = filled[:, None, :] & (slot_pos[:, None, :] <= pos[:, :, None])  # (R, T, S)
        new_mask = new_mask_BTT.to(dev).expand(len(rows), -1, -1)
        mask = torch.cat([cache_mask, new_mask], dim=2)[:, None]  # (R, 1, T, S + T)
        cos_c, sin_c = rope_cos_sin(slot_pos.clamp_min(0), cfg.head_dim, cfg.rope_theta)
        cos_n, sin_n = rope_cos_sin(pos, cfg.head_dim, cfg.rope_theta)
        # Where each persisted token goes: physical slot of its logical position.
        blk, slot = pos // self.L, pos % self.L
        row_t = torch.as_tensor(rows, dtype=torch.long)
        phys_blk = self.order[row_t[:, None].expand_as(blk.cpu()), blk.cpu().clamp(0, self.blocks - 1)]
        if bool(((phys_blk < 0) & persist_BT.cpu()).any()) or bool(((blk.cpu() >= self.count[row_t][:, None]) & persist_BT.cpu()).any()):
            raise RuntimeError("a persisted token's block was not started (call new_block first)")
        phys = (phys_blk * self.L + slot.cpu()).to(dev)
        full = rows == list(range(self.batch))
        keep = persist_BT.to(dev)
        # Index lists for the writes, made once here rather than per layer (and, on a GPU,
        # without a device sync inside the forward).
        write = None
        if bool(persist_BT.any()):
            write = (row_t.to(dev)[:, None].expand_as(keep)[keep], phys[keep], keep)
        self._plan = {"rows": slice(None) if full else row_t.to(dev), "mask": mask,
                      "cos_c": cos_c, "sin_c": sin_c, "cos_n": cos_n, "sin_n": sin_n,
                      "write": write}

    def rope_new(self) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for the new tokens' queries (the model rotates queries with these)."""
        assert self._plan is not None, "call prepare() before the forward"
        return self._plan["cos_n"], self._plan["sin_n"]

    def update(self, layer: int, k_BHTD: torch.Tensor, v_BHTD: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """New unrotated keys and values -> (keys (B,H,S+T,D) rotated, values, mask)."""
        p = self._plan
        assert p is not None, "call prepare() before the forward"
        rows = p["rows"]
        k_old = apply_rope(self.k[layer][rows], p["cos_c"], p["sin_c"])  # read before writing
        v_old = self.v[layer][rows]
        k_new = apply_rope(k_BHTD, p["cos_n"], p["sin_n"])
        if p["write"] is not None:
            b_idx, s_idx, keep = p["write"]
            self.k[layer][b_idx, :, s_idx] = k_BHTD.transpose(1, 2)[keep].to(self.k.dtype)
            self.v[layer][b_idx, :, s_idx] = v_BHTD.transpose(1, 2)[keep].to(self.v.dtype)
            if layer == self.cfg.n_layers - 1:
                self.filled[b_idx, s_idx] = True
        k_all = torch.cat([k_old.to(k_new.dtype), k_new], dim=2)
        v_all = torch.cat([v_old.to(v_BHTD.dtype), v_BHTD], dim=2)
        return k_all, v_all, p["mask"]
