"""The KV cache: preallocated keys and values for a batch of sessions, in frame blocks.

Layout, per layer, slot-major (not the usual head-major) so that a forward's new keys are
written straight from the fused projection's output, without a transpose or a copy, and so that
CUDA's flash kernels read their native (batch, slots, heads, head_dim) order:
- `kv`: (layers, batch, slots, 2 * kv_heads, head_dim), the unrotated keys (heads
  [0, kv_heads)) and then the values (heads [kv_heads, 2 * kv_heads)), exactly as the model's
  fused projection lays them out;
- `k_rot`: (layers, batch, slots, kv_heads, head_dim), the keys rotated by their positions.
Attention reads (batch, kv_heads, slots, head_dim) transposed views of them; nothing is copied.

The first `blocks * L` slots hold frame blocks (L = N + A tokens: one frame and the action taken
at it); the last `scratch` slots hold the keys of tokens that are attended to in one forward but
never kept (a block-diffusion frame being unmasked, a diagonal decoder's stand-ins).

Bounded memory forever: a session keeps `sink` blocks (its first frames, never evicted) and a
rolling window of the most recent `blocks - sink` blocks; starting a block when all are in use
evicts the oldest non-sink block.

Positions never grow. A block's *logical* position is its rank in the session's window (sinks
first, then the window from oldest to newest) times L, plus the slot, so frame 100,000 sees the
same window-relative positions as frame 10, the positions the model was trained on. Keys are
stored unrotated and, for attention, rotated by their logical position (`k_rot`). When the
window rolls, every logical position shifts, and `k_rot` is recomputed from the unrotated keys
for that session: one elementwise pass per frame, exact, with no error that builds up over time.

Use: before each forward, `positions = prepare(rows, positions_BT, persist_BT, new_mask_BTT)`;
the model's attention layers then call `update(layer, kv_BT2HD, k_rot_BTHD)`, which writes the
new keys and values (kept ones into the block their logical position names, the others into
scratch) and returns the cache's keys, values and the attention mask for this forward.

Host and device: the bookkeeping (which block lives where, which slots are filled) stays on the
host, so planning a forward never waits for the device; each plan goes to the device as one
packed copy (pinned and asynchronous on CUDA), so a frame's passes queue up without a host sync.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from worldsim.model import ModelConfig, apply_rope, position_freqs


@dataclass
class PassPlan:
    """What one forward needs from the cache, made by `KVCache.prepare` and read by the model's
    attention layers through `KVCache.update` (and its rotations directly). Static-buffer replays
    (`worldsim.inference.graphs`) swap in a copy that lives at fixed addresses."""

    rows: slice | torch.Tensor  # the sessions' rows: a slice (views) when consecutive
    full: bool  # the rows are the whole batch (the cache's tensors, not views of them)
    mask: torch.Tensor | None  # (B, 1, T, S) additive; None: every query sees every slot
    freqs: torch.Tensor  # (B, T, 1, head_dim/2) rotations of the new tokens
    write: torch.Tensor  # (B*T,) rows of the flat per-layer views that the new tokens fill

    TENSORS = ("mask", "freqs", "write")  # what a replay copies into its static buffers


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
        self.device = torch.device(device)
        H, D = cfg.n_kv_heads, cfg.head_dim
        self.kv = torch.zeros((cfg.n_layers, batch, self.slots, 2 * H, D), device=device, dtype=dtype)
        self.k_rot = torch.zeros((cfg.n_layers, batch, self.slots, H, D), device=device, dtype=dtype)
        # Per-layer views, made once: flat (batch * slots, heads, D) for writes, and
        # (batch, heads, slots, D) for attention.
        layers = range(cfg.n_layers)
        self._kv_flat = [self.kv[i].view(batch * self.slots, 2 * H, D) for i in layers]
        self._kr_flat = [self.k_rot[i].view(batch * self.slots, H, D) for i in layers]
        self._k_attn = [self.k_rot[i].transpose(1, 2) for i in layers]
        self._v_attn = [self.kv[i, :, :, H:].transpose(1, 2) for i in layers]
        # Rotations of every logical position a token can take: the newest block's successor
        # is the furthest (a block-diffusion frame being unmasked).
        self.max_position = (blocks + 1) * self.L
        self._freqs = position_freqs(cfg, torch.arange(self.max_position, device=device)[None])[0]  # (P, 1, D/2)
        # Host bookkeeping. Per session: the physical block of each logical block, in logical
        # order (-1: none), the blocks in use, which slots hold kept tokens, blocks ever started.
        self.order = torch.full((batch, blocks), -1, dtype=torch.long)
        self.count = torch.zeros(batch, dtype=torch.long)
        self.filled = torch.zeros((batch, self.slots), dtype=torch.bool)
        self.frames_seen = torch.zeros(batch, dtype=torch.long)
        self.plan: PassPlan | None = None  # the next forward's, set by `prepare`

    @property
    def k(self) -> torch.Tensor:
        """Unrotated keys, (layers, batch, slots, kv_heads, head_dim) (a view)."""
        return self.kv[..., :self.cfg.n_kv_heads, :]

    @property
    def v(self) -> torch.Tensor:
        """Values, (layers, batch, slots, kv_heads, head_dim) (a view)."""
        return self.kv[..., self.cfg.n_kv_heads:, :]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.kv, self.k_rot))

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        """Host tensor -> device without making the host wait (pinned, asynchronous on CUDA)."""
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _rows(self, rows: list[int]) -> slice | torch.Tensor:
        """Index of these rows: a slice (views, no copy) when they are consecutive."""
        if rows == list(range(rows[0], rows[0] + len(rows))):
            return slice(rows[0], rows[0] + len(rows))
        return self.to_device(torch.as_tensor(rows))

    # -- session bookkeeping -----------------------------------------------------------------
    def reset(self, rows: list[int] | None = None) -> None:
        rows = list(range(self.batch)) if rows is None else rows
        self.order[rows] = -1
        self.count[rows] = 0
        self.filled[rows] = False
        self.frames_seen[rows] = 0

    def copy_rows(self, src: list[int], dst: list[int]) -> None:
        """Make rows `dst` hold what rows `src` hold (their frame blocks and bookkeeping): a
        branch of a session that may then write a different block without touching it."""
        s = self.block_slots
        self.kv[:, dst, :s] = self.kv[:, src, :s]
        self.k_rot[:, dst, :s] = self.k_rot[:, src, :s]
        for t in (self.order, self.count, self.filled, self.frames_seen):
            t[dst] = t[src]

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
        """Logical index of each row's newest block: (R,), on the host."""
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
        pos = self.to_device(self.slot_positions(rows).clamp_min(0))  # (R, S_blocks)
        sel, s, H = self._rows(rows), self.block_slots, self.cfg.n_kv_heads
        k = self.kv[:, sel, :s, :H]  # (layers, R, S_blocks, H, D)
        self.k_rot[:, sel, :s] = apply_rope(k, self._freqs[pos][None])

    # -- one forward -------------------------------------------------------------------------
    def prepare(self, rows: list[int], positions_BT: torch.Tensor, persist_BT: torch.Tensor,
                new_mask_BTT: torch.Tensor | None = None) -> torch.Tensor:
        """Plan the next forward for sessions `rows`, with new tokens at logical positions.

        positions_BT: (B, T) logical positions, best given on the host (they are planned there).
        persist_BT: which new tokens to keep in their blocks (the rest go to scratch slots).
        new_mask_BTT: (B or 1, T, T) which new tokens may see which (True = attend); None: all.
        Kept slots from earlier forwards are visible to a query unless at a later position.
        When every query may see every slot (a block-diffusion frame being unmasked once the
        window is full) the plan has no mask at all, and attention runs unmasked.
        Returns the positions on the device, for the model's inputs."""
        if torch.is_grad_enabled():
            raise RuntimeError("cached forwards are inference: run them under torch.no_grad() "
                               "or torch.inference_mode()")
        R, T = positions_BT.shape
        pos = positions_BT.cpu()
        persist = persist_BT.cpu().expand(R, T)
        if int((~persist).sum(1).max()) > self.scratch:
            raise RuntimeError(f"more than {self.scratch} scratch tokens in one forward")
        if int(pos.min()) < 0 or int(pos.max()) >= self.max_position:
            raise RuntimeError(f"positions must lie in [0, {self.max_position})")
        row_t = torch.as_tensor(rows, dtype=torch.long)
        # Each new token's slot: its block slot if kept, else the next scratch slot.
        blk, off = pos // self.L, pos % self.L
        if bool((persist & (blk >= self.count[row_t][:, None])).any()):
            raise RuntimeError("a kept token's block was not started (call new_block first)")
        phys = self.order[row_t[:, None].expand(R, T), blk.clamp(0, self.blocks - 1)] * self.L + off
        scratch = self.block_slots + (~persist).long().cumsum(1) - 1
        slot = torch.where(persist, phys, scratch)  # (R, T)
        # What each query may see of the cache: slots kept before this forward, at positions
        # not after its own (-1: not visible).
        visible = torch.cat([self.slot_positions(rows),
                             torch.full((R, self.scratch), -1, dtype=torch.long)], 1)
        visible[~self.filled[row_t]] = -1
        open_all = new_mask_BTT is None  # does every query see every slot?
        if open_all:
            written = torch.zeros(R, self.slots, dtype=torch.bool)
            written[torch.arange(R)[:, None].expand(R, T), slot] = True
            seen = (visible >= 0) & (visible <= pos.min(1, keepdim=True).values)
            open_all = bool((seen | written).all())
        self.filled[row_t[:, None].expand(R, T)[persist], slot[persist]] = True
        write = row_t[:, None] * self.slots + slot  # rows of the flat per-layer views
        parts = [pos, write] if open_all else [pos, write, visible, slot]
        host_mask = new_mask_BTT is not None and new_mask_BTT.device.type == "cpu" and \
            self.device.type != "cpu"
        if host_mask and not open_all:
            parts.append(new_mask_BTT.long())
        packed = self.to_device(torch.cat([p.flatten() for p in parts]))
        pos, write, *rest = packed.split([p.numel() for p in parts])
        pos = pos.view(R, T)
        bias = None
        if not open_all:
            visible, slot = rest[0].view(R, -1), rest[1].view(R, T)
            if new_mask_BTT is None:
                new_mask = torch.ones(1, T, T, dtype=torch.bool, device=self.device)
            else:
                new_mask = rest[2].view(new_mask_BTT.shape).bool() if host_mask else new_mask_BTT.to(self.device)
            vis = visible[:, None, :]
            mask = (vis >= 0) & (vis <= pos[:, :, None])  # (R, T, S)
            mask.scatter_(2, slot[:, None, :].expand(R, T, T), new_mask.expand(R, T, T))
            # An additive mask, made once here: SDPA would otherwise convert a boolean mask in
            # every layer.
            bias = torch.zeros(mask.shape, dtype=self.kv.dtype, device=self.device)
            bias.masked_fill_(~mask, float("-inf"))
            bias = bias[:, None]
        sel = self._rows(rows)
        self.plan = PassPlan(rows=sel, full=isinstance(sel, slice) and sel == slice(0, self.batch),
                             mask=bias, freqs=self._freqs[pos], write=write)
        return pos

    def update(self, layer: int, kv_BT2HD: torch.Tensor, k_rot_BTHD: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """New unrotated keys and values (B, T, 2 * kv_heads, D) and rotated keys
        (B, T, kv_heads, D) -> the cache's rotated keys and values for these rows, each
        (B, kv_heads, S, D), and the mask (B, 1, T, S), or None when every query sees every slot."""
        p = self.plan
        assert p is not None, "call prepare() before the forward"
        if kv_BT2HD.dtype != self.kv.dtype:  # e.g. a float32 cache under autocast
            kv_BT2HD, k_rot_BTHD = kv_BT2HD.to(self.kv.dtype), k_rot_BTHD.to(self.kv.dtype)
        self._kv_flat[layer].index_copy_(0, p.write, kv_BT2HD.flatten(0, 1))
        self._kr_flat[layer].index_copy_(0, p.write, k_rot_BTHD.flatten(0, 1))
        if p.full:
            return self._k_attn[layer], self._v_attn[layer], p.mask
        return self._k_attn[layer][p.rows], self._v_attn[layer][p.rows], p.mask
