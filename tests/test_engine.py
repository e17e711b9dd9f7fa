from dataclasses import replace

import numpy as np
import pytest
import torch

from worldsim.envs.crafter import CRAFTER_SPACE
from worldsim.model import WorldModel, preset_config
from worldsim.objectives import block_diffusion_inputs
from worldsim.sequence import ar_inputs, interleave
from worldsim.tokenizers.action import make_action_tokenizer
from worldsim.inference.cache import KVCache
from worldsim.inference.common import prefill
from worldsim.inference import decode_diagonal
from worldsim.inference.engine import DecoderSettings, Engine
from worldsim.inference.sampling import GREEDY, SamplingSettings


def tiny(objective, **kw):
    torch.manual_seed(0)
    return WorldModel(preset_config("tiny", objective=objective, **kw)).eval()


def engine(model, decoder, **kw):
    act = make_action_tokenizer(CRAFTER_SPACE, offset=model.cfg.codebook_size)
    return Engine(model, None, act, decoder, **kw)


def context(cfg, c=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, cfg.codebook_size, (c, cfg.tokens_per_frame), generator=g)
    actions = [int(a) for a in torch.randint(0, 17, (c - 1,), generator=g)]
    return frames, actions


def dream(eng, frames, actions, plan, seed=None):
    s = eng.open(frames, actions, seed=seed)
    out = [s.step(a)[0] for a in plan]
    return s, out


@torch.no_grad()
def test_cache_parity_ar():
    """A full causal forward equals prefill plus token-by-token decode with the cache."""
    model = tiny("ar")
    cfg = model.cfg
    g = torch.Generator().manual_seed(1)
    f = torch.randint(0, cfg.codebook_size, (2, 3, cfg.tokens_per_frame), generator=g)
    a = cfg.codebook_size + torch.randint(0, cfg.action_ids, (2, 3, 1), generator=g)
    x = ar_inputs(cfg, f, a)
    full = model(x["tokens"], x["positions"], prev_BT=x["prev"], causal=True)
    cache = KVCache(cfg, 2, blocks=4)
    for _ in range(3):
        cache.new_block([0, 1])
    split = 20
    pos = x["positions"][:, :split]
    cache.prepare([0, 1], pos, torch.ones(2, split, dtype=torch.bool),
                  torch.ones(split, split, dtype=torch.bool).tril()[None])
    out = [model(x["tokens"][:, :split], pos, cache=cache, prev_BT=x["prev"][:, :split])]
    for t in range(split, x["tokens"].shape[1]):
        p = x["positions"][:, t:t + 1]
        cache.prepare([0, 1], p, torch.ones(2, 1, dtype=torch.bool), torch.ones(1, 1, 1, dtype=torch.bool))
        out.append(model(x["tokens"][:, t:t + 1], p, cache=cache, prev_BT=x["prev"][:, t:t + 1]))
    torch.testing.assert_close(torch.cat(out, 1), full, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_cache_parity_block_diffusion():
    """The noisy frame's logits from the training forward equal prefill + a cached pass."""
    model = tiny("block_diffusion")
    cfg = model.cfg
    g = torch.Generator().manual_seed(2)
    F_, N, L = cfg.frames, cfg.tokens_per_frame, cfg.block_len
    f = torch.randint(0, cfg.codebook_size, (1, F_, N), generator=g)
    a = cfg.codebook_size + torch.randint(0, cfg.action_ids, (1, F_, 1), generator=g)
    x = block_diffusion_inputs(cfg, f, a, torch.Generator().manual_seed(3))
    full = model(x["tokens"], x["positions"], mask=x["mask"], prev_BT=x["prev"])
    last = slice((F_ - 2) * N, (F_ - 1) * N)  # noisy frame F-1
    cache = KVCache(cfg, 1, blocks=F_ - 1)
    prefill(model, cache, [0], f[:, :F_ - 1], a[:, :F_ - 2])  # blocks 0..F-3
    # The fused pass: clean block F-2 and noisy frame F-1 together.
    cache.new_block([0])
    clean = interleave(f[:, F_ - 2:F_ - 1], a[:, F_ - 2:F_ - 1])
    tokens = torch.cat([clean, x["tokens"][:, last]], 1)
    positions = torch.cat([torch.arange((F_ - 2) * L, (F_ - 1) * L), x["positions"][0, last]])[None]
    m = torch.ones(L + N, L + N, dtype=torch.bool)
    m[:L, L:] = False
    cache.prepare([0], positions, torch.tensor([[True] * L + [False] * N]), m[None])
    prev = torch.cat([torch.full_like(clean, cfg.codebook_size), x["prev"][:, last]], 1)
    out = model(tokens, positions, cache=cache, prev_BT=prev)
    torch.testing.assert_close(out[:, L:], full[:, last], atol=1e-4, rtol=1e-4)


def test_diagonal_with_full_window_equals_ar():
    model = tiny("ar")
    frames, actions = context(model.cfg)
    plan = [1, 2, 5, 3]
    cols = model.cfg.grid[1]
    e1 = engine(model, DecoderSettings("ar", sampling=GREEDY))
    e2 = engine(model, DecoderSettings("diagonal", window=cols, sampling=GREEDY))
    s1, s2 = e1.open(frames, actions), e2.open(frames, actions)
    for a in plan:
        s1.step(a)
        s2.step(a)
        assert torch.equal(s1.last_frame, s2.last_frame)


def test_diagonal_pass_count_and_narrow_window_runs():
    model = tiny("ar")
    frames, actions = context(model.cfg)
    e = engine(model, DecoderSettings("diagonal", window=2, sampling=GREEDY))
    s = e.open(frames, actions)
    _, stats = s.step(1)
    r, c = model.cfg.grid
    assert stats.passes == decode_diagonal.passes_per_frame(model.cfg, decode_diagonal.Settings(window=2)) == (r - 1) * 2 + c
    assert int(s.last_frame.max()) < model.cfg.codebook_size


def test_block_diffusion_k_equals_n_unmasks_one_token_per_pass(monkeypatch):
    model = tiny("block_diffusion")
    cfg = model.cfg
    masked_counts = []
    hidden = model.hidden

    def spy(tokens, *args, **kw):
        masked_counts.append(int((tokens[0, -cfg.tokens_per_frame:] == cfg.mask_id).sum()))
        return hidden(tokens, *args, **kw)

    monkeypatch.setattr(model, "hidden", spy)
    frames, actions = context(cfg)
    s = engine(model, DecoderSettings("block_diffusion", steps=cfg.tokens_per_frame,
                                      sampling=SamplingSettings(temperature=1.0))).open(frames, actions)
    masked_counts.clear()
    _, stats = s.step(3)
    n = cfg.tokens_per_frame
    assert stats.passes == n
    assert masked_counts == list(range(n, 0, -1))  # one fewer mask every pass
    assert not bool((s.last_frame == cfg.mask_id).any())


def test_threshold_takes_fewer_passes():
    model = tiny("block_diffusion")
    frames, actions = context(model.cfg)
    s = engine(model, DecoderSettings("block_diffusion", steps=8, threshold=0.0,
                                      sampling=GREEDY)).open(frames, actions)
    _, stats = s.step(1)
    assert stats.passes == 1  # every token clears a zero threshold at once


@pytest.mark.parametrize("objective,decoder", [("ar", "ar"), ("ar", "diagonal"),
                                               ("block_diffusion", "block_diffusion")])
def test_seeded_rollout_repeats(objective, decoder):
    model = tiny(objective)
    frames, actions = context(model.cfg)
    plan = [1, 4, 4, 2, 5]
    settings = DecoderSettings(decoder, sampling=SamplingSettings(temperature=1.0, top_k=20, top_p=0.9))
    runs = []
    for _ in range(2):
        e = engine(model, settings)
        s = e.open(frames, actions, seed=7)
        runs.append([s.step(a) and s.last_frame.clone() for a in plan])
    for x, y in zip(*runs):
        assert torch.equal(x, y)
    e = engine(model, settings)
    s = e.open(frames, actions, seed=8)
    other = [s.step(a) and s.last_frame.clone() for a in plan]
    assert any(not torch.equal(x, y) for x, y in zip(runs[0], other))


def test_long_session_bounded_memory_and_positions():
    """The window rolls three times over: the kept slots never outgrow the window, positions
    stay those of a window (a block's position is its rank in it), and a frame deep into the
    session sees the same positions as the first frame after the window filled."""
    model = tiny("block_diffusion")
    cfg = model.cfg
    frames, actions = context(cfg)
    e = engine(model, DecoderSettings("block_diffusion", steps=1, sampling=GREEDY), max_sessions=1)
    s = e.open(frames, actions)
    blocks, L = e.cache.blocks, cfg.block_len
    rng = np.random.default_rng(0)
    full = 0
    for i in range(4 * blocks):  # the first `blocks` frames fill the window, then it rolls 3 times
        s.step(int(rng.integers(0, 17)))
        filled = e.cache.filled[0]
        assert not bool(filled[e.cache.block_slots:].any())  # scratch slots are never kept
        n_blocks = int(filled.sum()) // L
        assert n_blocks <= blocks and int(filled.sum()) == n_blocks * L
        # Ranks in the window, without gaps: frame 4 * blocks sees what the window's first did.
        pos = e.cache.slot_positions([0])[0][filled[:e.cache.block_slots]]
        assert sorted(pos.tolist()) == list(range(n_blocks * L))
        full += n_blocks == blocks
    assert full >= 3 * blocks and int(e.cache.frames_seen[0]) == 4 * blocks + 1
    assert torch.isfinite(e.cache.k).all() and torch.isfinite(e.cache.v).all()
    assert int(s.last_frame.max()) < cfg.codebook_size


@pytest.mark.parametrize("objective,decoder,sampling", [
    ("ar", "diagonal", GREEDY), ("block_diffusion", "block_diffusion", GREEDY),
    ("ar", "ar", SamplingSettings(temperature=1.0)),
    ("block_diffusion", "block_diffusion", SamplingSettings(temperature=1.0, top_k=16))])
def test_sessions_joining_and_leaving_match_solo_runs(objective, decoder, sampling):
    """Greedy, and with sampling too: each session draws from its own seeded generator."""
    model = tiny(objective)
    settings = DecoderSettings(decoder, sampling=sampling)
    ctx = [context(model.cfg, c=2 + i, seed=i) for i in range(3)]
    plans = [[1, 2, 3, 4, 1, 2], [4, 4, 1, 5], [2, 2, 3]]

    def solo(i):
        s = engine(model, settings).open(*ctx[i], seed=10 + i)
        return [s.step(a) and s.last_frame.clone() for a in plans[i]]

    alone = [solo(i) for i in range(3)]
    e = engine(model, settings, max_sessions=3)
    got = {0: [], 1: [], 2: []}
    sess = {0: e.open(*ctx[0], seed=10)}
    for t in range(6):
        if t == 1:
            sess[1] = e.open(*ctx[1], seed=11)  # joins a running batch
        if t == 2:
            sess[2] = e.open(*ctx[2], seed=12)
        live = {s: plans[i][len(got[i])] for i, s in sess.items()
                if not s.closed and len(got[i]) < len(plans[i])}
        e.step(live)
        for i, s in sess.items():
            if s in live:
                got[i].append(s.last_frame.clone())
            if len(got[i]) == len(plans[i]):
                s.close()  # leaves; its row is free for the next session
    for i in range(3):
        assert len(got[i]) == len(plans[i])
        for x, y in zip(alone[i], got[i]):
            assert torch.equal(x, y)
    assert sorted(e.free_rows) == [0, 1, 2]


def test_bad_decoder_for_objective():
    with pytest.raises(ValueError, match="does not fit"):
        engine(tiny("ar"), DecoderSettings("block_diffusion"))
    # the decoders that fit the model, not every name of the registry (block_diffusion would be refused)
    with pytest.raises(ValueError, match="unknown decoder 'beam'; a model trained with 'ar' decodes with ar or diagonal$"):
        engine(tiny("ar"), DecoderSettings("beam"))


@pytest.mark.parametrize("rope", ["1d", "3d"])
def test_rotated_keys_match_their_window_positions_after_rolling(rope):
    from worldsim.model import apply_rope, position_freqs

    model = tiny("block_diffusion", rope=rope)
    frames, actions = context(model.cfg)
    e = engine(model, DecoderSettings("block_diffusion", steps=2, sampling=GREEDY), max_sessions=2)
    s = e.open(frames, actions)
    for a in range(3 * e.cache.blocks):  # the window rolls many times
        s.step(a % 17)
    c = e.cache
    pos = c.slot_positions([s.row])  # (1, S_blocks)
    filled = c.filled[s.row, :c.block_slots]
    assert int(pos[0, filled].min()) == 0 and int(pos[0, filled].max()) < c.block_slots
    freqs = position_freqs(model.cfg, pos.clamp_min(0))  # (1, S, 1, D/2)
    want = apply_rope(c.k[:, s.row:s.row + 1, :c.block_slots], freqs[None])  # (layers, 1, S, H, D)
    got = c.k_rot[:, s.row:s.row + 1, :c.block_slots]
    torch.testing.assert_close(got[:, :, filled], want[:, :, filled])


def test_unseeded_sessions_differ_but_a_seeded_engine_repeats():
    model = tiny("block_diffusion")
    frames, actions = context(model.cfg)
    settings = DecoderSettings("block_diffusion", sampling=SamplingSettings(temperature=1.0))

    def run(engine_seed):
        e = engine(model, settings, max_sessions=2, seed=engine_seed)
        a, b = e.open(frames, actions), e.open(frames, actions)
        e.step({a: 1, b: 1})
        return a.last_frame.clone(), b.last_frame.clone()

    a1, b1 = run(0)
    a2, b2 = run(0)
    assert not torch.equal(a1, b1)  # two sessions do not share their draws
    assert torch.equal(a1, a2) and torch.equal(b1, b2)


@pytest.mark.parametrize("decoder", ["block_diffusion", "ar", "diagonal"])
def test_decoding_a_frame_never_reads_the_device(decoder):
    """On the meta device every tensor is shape-only, so any read of a device value back to the
    host (a sync on a GPU) would fail. Only the bookkeeping on the host has values."""
    from worldsim.inference.engine import DECODERS

    objective = "block_diffusion" if decoder == "block_diffusion" else "ar"
    cfg = preset_config("tiny", objective=objective)
    with torch.device("meta"):
        model = WorldModel(cfg).eval()
        frames = torch.zeros(2, 3, cfg.tokens_per_frame, dtype=torch.long)
        acts = torch.zeros(2, 2, cfg.action_tokens, dtype=torch.long)
    cache = KVCache(cfg, 2, blocks=3, device="meta")
    prefill(model, cache, [0, 1], frames, acts)
    for _ in range(4):  # the window rolls
        frame, stats = DECODERS[decoder].decode(model, cache, [0, 1], frames[:, -1], acts[:, -1], GREEDY, None)
    assert frame.device.type == "meta" and frame.shape == (2, cfg.tokens_per_frame)
    assert stats.passes > 0


@pytest.mark.parametrize("sampling,threshold", [
    (GREEDY, None), (SamplingSettings(temperature=1.0, top_k=16), 0.2)])
def test_replayed_passes_match_eager_ones(sampling, threshold):
    """Static-buffer passes (CUDA graphs on a GPU; the same buffers run eagerly here) give the
    same frames as eager passes while the window rolls, sessions join and leave, and a batch
    with rows that are not consecutive falls back to eager passes; greedy, and sampled with a
    confidence threshold (frames that finish early)."""
    model = tiny("block_diffusion")
    ctx = [context(model.cfg, c=2 + i, seed=i) for i in range(3)]

    def run(graphs):
        settings = DecoderSettings("block_diffusion", steps=3, threshold=threshold, sampling=sampling,
                                   graphs=graphs)
        e = engine(model, settings, max_sessions=3, seed=5)
        s = [e.open(*ctx[i]) for i in range(3)]
        out = []
        for t in range(16):  # the window (3 blocks on tiny) fills and rolls
            if t == 6:
                s[1].close()  # rows 0 and 2 are left: not consecutive
            if t == 9:
                s[1] = e.open(*ctx[1], seed=1)  # joins again, rows 0..2 consecutive
            live = [x for x in s if not x.closed]
            e.step({x: t % 17 for x in live})
            out.append(torch.cat([x.last_frame for x in live]))
        return e, out

    e_eager, eager = run(False)
    e_graph, replayed = run(True)
    assert e_eager.graphs is None and e_graph.graphs is not None
    # Three pass shapes: the fused pass, and the noisy pass masked (while a window fills) and
    # unmasked (once every slot is visible to every query).
    assert sorted(k[-1] for k in e_graph.graphs.entries) == [False, False, True]
    frames = 6 + 7  # frames stepped with rows 0..2; 3 passes each, fewer with a threshold
    assert e_graph.graphs.replays == 3 * frames if threshold is None else \
        frames <= e_graph.graphs.replays <= 3 * frames
    for x, y in zip(eager, replayed):
        assert torch.equal(x, y)


@torch.no_grad()
def test_unmasked_pass_once_every_slot_is_visible():
    """A noisy block-diffusion pass with `new_mask=None` runs unmasked once the window is full,
    and gives the logits of the same pass with an explicit all-true mask; while the window fills,
    the same call still builds a mask."""
    model = tiny("block_diffusion")
    cfg = model.cfg
    N, L = cfg.tokens_per_frame, cfg.block_len
    cache = KVCache(cfg, 1, blocks=3)
    g = torch.Generator().manual_seed(0)
    f = torch.randint(0, cfg.codebook_size, (1, 2, N), generator=g)
    prefill(model, cache, [0], f, torch.full((1, 1, 1), cfg.codebook_size))  # one block
    noisy = torch.randint(0, cfg.codebook_size, (1, N), generator=g)
    persist = torch.zeros(1, N, dtype=torch.bool)

    def noisy_pass(new_mask):
        base = int(cache.current_block([0])[0]) * L
        pos = cache.prepare([0], base + L + torch.arange(N)[None], persist, new_mask)
        return model(noisy, pos, cache=cache), cache.plan.mask

    _, mask = noisy_pass(None)
    assert mask is not None  # two of three blocks empty: their slots are masked
    for _ in range(3):  # fill the window with finished blocks
        cache.new_block([0])
        pos = cache.prepare([0], int(cache.current_block([0])[0]) * L + torch.arange(L)[None],
                            torch.ones(1, L, dtype=torch.bool), torch.ones(1, L, L, dtype=torch.bool))
        model(torch.randint(0, cfg.codebook_size, (1, L), generator=g), pos, cache=cache)
    unmasked, mask = noisy_pass(None)
    assert mask is None
    masked, mask = noisy_pass(torch.ones(1, N, N, dtype=torch.bool))
    assert mask is not None and bool((mask == 0).all())
    torch.testing.assert_close(unmasked, masked)


def _first_pass_logits(monkeypatch):
    """Record the logits of every block-diffusion pass (through the module's `pass_logits`)."""
    from worldsim.inference import decode_block_diffusion as bd

    seen, real = [], bd.pass_logits

    def spy(*args, **kw):
        out = real(*args, **kw)
        seen.append(out.float().clone())
        return out

    monkeypatch.setattr(bd, "pass_logits", spy)
    return seen


def test_action_guidance_samples_from_the_guided_logits(monkeypatch):
    """One pass per frame, greedy: a guided frame is the argmax of l(a) + w * (l(a) - l(noop)),
    where both logits come from unguided sessions with the same past; on later frames too, once
    the window rolls: the shadow row holds the session's past, and the session's own row is left
    as it was."""
    model = tiny("block_diffusion")
    w, plan = 50.0, [3, 4, 1, 2]  # large: the untrained model hardly heeds its action
    frames, actions = context(model.cfg)
    plain = DecoderSettings("block_diffusion", steps=1, sampling=GREEDY)
    guided = engine(model, replace(plain, guidance=w)).open(frames, actions)
    seen = _first_pass_logits(monkeypatch)
    for a in plan:
        seen.clear()
        guided.step(a)
        assert len(seen) == 1 and seen[0].shape[0] == 2  # the session and its shadow, one batch
        ref = {}
        for b in (a, 0):  # the same past, stepped without guidance under a and under the no-op
            seen.clear()
            engine(model, plain).open(frames, actions).step(b)
            ref[b] = seen[0][0]
        want = (ref[a] + w * (ref[a] - ref[0])).argmax(-1)
        assert torch.equal(guided.last_frame[0], want)
        assert not torch.equal(want, ref[a].argmax(-1))  # guidance changed something
        frames = torch.cat([frames, guided.last_frame])
        actions = actions + [a]


def test_action_guidance_under_the_null_action_is_plain_decoding():
    """Under the no-op the two branches agree, and the frames are those of plain decoding."""
    model = tiny("block_diffusion")
    frames, actions = context(model.cfg)
    plain = DecoderSettings("block_diffusion", steps=4, sampling=GREEDY)
    runs = []
    for d in (plain, replace(plain, guidance=2.0)):
        s = engine(model, d).open(frames, actions)
        runs.append([s.step(0) and s.last_frame.clone() for _ in range(3)])
    assert [torch.equal(x, y) for x, y in zip(*runs)] == [True] * 3


def test_action_guidance_needs_an_engine_made_for_it():
    model = tiny("block_diffusion")
    eng = engine(model, DecoderSettings("block_diffusion", sampling=GREEDY))
    s = eng.open(*context(model.cfg))
    eng.decoder = replace(eng.decoder, guidance=1.0)
    with pytest.raises(ValueError, match="guidance"):
        s.step(3)
    with pytest.raises(ValueError, match="guidance must be at least 0"):
        engine(model, DecoderSettings("block_diffusion", guidance=-1.0))


def test_with_a_threshold_a_session_dreams_as_it_would_alone():
    """With a confidence threshold the sessions of a batch finish a frame at different passes;
    a session that has finished draws nothing in the passes the others still need, so its
    frames do not depend on the batch it is stepped in."""
    model = tiny("block_diffusion")
    with torch.no_grad():  # sharper odds: some frames finish in a pass or two, others take more
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(4.0)
    settings = DecoderSettings("block_diffusion", steps=8, threshold=0.5, peak=True,
                               sampling=SamplingSettings(temperature=0.1))
    ctx = [context(model.cfg, 3, seed=2), context(model.cfg, 3, seed=0)]
    plan = [1, 2, 3, 4, 5, 6]

    def run(which):
        e = engine(model, settings, max_sessions=2)
        sess = [e.open(*ctx[i], seed=11 + 11 * i) for i in which]
        frames, passes = [], []
        for a in plan:
            out = e.step({s: a for s in sess})
            frames.append(sess[0].last_frame.clone())
            passes.append(out[sess[0]][1].passes)
        return frames, passes

    alone, passes_a = run([0])
    _, passes_b = run([1])
    batched, _ = run([0, 1])
    assert passes_a != passes_b  # the two finish their frames at different passes
    assert all(torch.equal(x, y) for x, y in zip(alone, batched))


def test_next_token_sessions_with_many_sinks_keep_their_sinks_and_last_frame():
    """An engine for a next-token model keeps two rolling blocks beside its sinks whatever
    `sink` is: the block being written and the frame before it. With one, starting a block
    evicted the frame before it, and its last token was written into a sink."""
    model = tiny("ar")
    sink = model.cfg.frames - 1
    e = engine(model, DecoderSettings("ar", sampling=GREEDY), sink=sink, max_sessions=1)
    assert e.cache.blocks >= sink + 2
    s = e.open(*context(model.cfg, 4, seed=0), seed=1)
    L = model.cfg.block_len
    for a in (1, 2, 3):
        sinks = e.cache.kv[:, 0, :sink * L].clone()
        s.step(a)
        assert torch.equal(e.cache.kv[:, 0, :sink * L], sinks)


def test_prefill_keeps_the_first_frames_as_sinks():
    """A context longer than the cache: the sinks hold its first frames, as a session that had
    stepped through it would, and the rest of the window its most recent ones."""
    model = tiny("block_diffusion")
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, cfg.codebook_size, (1, 7, cfg.tokens_per_frame), generator=g)
    actions = cfg.codebook_size + torch.randint(0, 17, (1, 6, 1), generator=g)
    cache = KVCache(cfg, 1, 3, 1)
    with torch.no_grad():
        prefill(model, cache, [0], frames, actions)

        def first_layer_keys(f):  # keys of layer 0 depend on a block's own tokens alone
            c = KVCache(cfg, 1, 3, 0)
            prefill(model, c, [0], frames[:, f:f + 2], actions[:, f:f + 1])
            return c.k[0, 0, :cfg.block_len]

    held = [int(b) for b in cache.order[0] if b >= 0]
    assert len(held) == 2  # frames 0 and 5 with their actions; frame 6 is the newest, not cached
    for phys, f in zip(held, (0, 5)):
        assert torch.allclose(cache.k[0, 0, phys * cfg.block_len:(phys + 1) * cfg.block_len], first_layer_keys(f))


@pytest.mark.parametrize("decoder", ["ar", "diagonal"])
def test_one_token_frames_from_one_context_frame_match_the_reference(decoder):
    """With one token per frame and one context frame nothing precedes the token to decode:
    prefill planned a pass over no tokens and crashed in the cache. It now opens with none,
    and the frames are the no-cache reference's."""
    from worldsim.inference import plain

    model = tiny("ar", grid=(1, 1), tokens_per_frame=1)
    cfg = model.cfg
    frames, _ = context(cfg, c=1)
    plan = [3, 5, 7]
    s = engine(model, DecoderSettings(decoder, sampling=GREEDY)).open(frames, [])
    out = torch.cat([s.step(a) and s.last_frame.clone() for a in plan])  # (T, N = 1)
    off = cfg.codebook_size
    ref = plain.rollout(model, frames[None], torch.tensor([[[off + plan[0]]]]),
                        torch.tensor([[[off + a] for a in plan[1:]]]), GREEDY)
    assert torch.equal(out, ref[0])


def test_a_temperature_that_is_not_a_number_is_refused_with_the_settings():
    for t in (float("nan"), float("inf"), -0.1):
        with pytest.raises(ValueError, match="temperature"):
            SamplingSettings(temperature=t)
