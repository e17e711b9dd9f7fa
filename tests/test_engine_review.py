"""The engine refuses what it cannot dream from with one line, before it touches the cache, and
sessions keep to their own rows whatever order they open, close and reset in."""

import numpy as np
import pytest
import torch

from worldsim.envs.crafter import CRAFTER_SPACE
from worldsim.tokenizers.action import make_action_tokenizer
from worldsim.inference.engine import DecoderSettings, Engine
from worldsim.inference.sampling import GREEDY, SamplingSettings

from _models import tiny_model as tiny


def engine(model, decoder, **kw):
    act = make_action_tokenizer(CRAFTER_SPACE, offset=model.cfg.codebook_size)
    return Engine(model, None, act, decoder, **kw)


def context(cfg, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, cfg.codebook_size, (c, cfg.tokens_per_frame), generator=g)
    actions = [int(a) for a in torch.randint(0, 17, (c - 1,), generator=g)]
    return frames, actions


def one_line(excinfo, *words):
    msg = str(excinfo.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


@pytest.mark.parametrize("objective,decoder", [("ar", "ar"), ("block_diffusion", "block_diffusion")])
def test_a_closed_session_cannot_be_reset_into_the_row_of_the_session_after_it(objective, decoder):
    """A closed session's row goes to the next session opened; resetting the closed one
    prefilled its context over that session's cache row."""
    model = tiny(objective)
    e = engine(model, DecoderSettings(decoder, sampling=GREEDY), max_sessions=2)
    a = e.open(*context(model.cfg, seed=0), seed=1)
    a.close()
    b = e.open(*context(model.cfg, seed=5), seed=2)
    assert b.row == a.row
    kv = e.cache.kv[:, b.row].clone()
    order = e.cache.order[b.row].clone()
    with pytest.raises(RuntimeError, match="closed") as ex:
        a.reset(*context(model.cfg, seed=0))
    one_line(ex, f"session {a.id}")
    assert torch.equal(e.cache.kv[:, b.row], kv) and torch.equal(e.cache.order[b.row], order)
    assert e.free_rows == [1]


@pytest.mark.parametrize("kw,name", [
    (dict(max_sessions=0), "max_sessions"), (dict(max_sessions=-1), "max_sessions"),
    (dict(max_sessions=2.5), "max_sessions"), (dict(sink=1.5), "sink"), (dict(sink=-1), "sink"),
    (dict(seed=None), "seed"), (dict(seed=1.5), "seed")])
def test_bad_engine_arguments_are_refused_at_construction(kw, name):
    with pytest.raises(ValueError, match=name) as ex:
        engine(tiny("block_diffusion"), DecoderSettings(sampling=GREEDY), **kw)
    one_line(ex, repr(next(iter(kw.values()))))


def test_sampling_that_is_not_sampling_settings_is_refused_at_construction():
    with pytest.raises(ValueError, match="sampling must be SamplingSettings") as ex:
        engine(tiny("ar"), DecoderSettings("ar", sampling={"temperature": 0.0}))
    one_line(ex)


@pytest.mark.parametrize("bad,name", [
    (dict(top_k=2.5), "top_k"), (dict(top_k=True), "top_k"), (dict(top_k=float("nan")), "top_k"),
    (dict(temperature="1"), "temperature"), (dict(temperature=None), "temperature"),
    (dict(top_p="0.9"), "top_p"), (dict(top_p=float("nan")), "top_p"), (dict(top_p=0.0), "top_p"),
    (dict(temperature=-1.0), "temperature"), (dict(top_k=-1), "top_k")])
def test_sampling_settings_refuse_a_bad_value_with_a_line_that_names_it(bad, name):
    """A float, bool or NaN top_k was taken and failed at the first draw, inside a frame; a
    string failed with a TypeError; and the line named all three settings, not the bad one."""
    with pytest.raises(ValueError, match=f"^{name} ") as ex:
        SamplingSettings(**bad)
    one_line(ex, repr(bad[name]))


def test_sampling_settings_take_numpy_numbers():
    s = SamplingSettings(temperature=np.float32(0.5), top_k=np.int64(4), top_p=np.float64(0.9))
    assert s.top_k == 4


@pytest.mark.parametrize("seed", [2**64, -2**63 - 1, 1.5, "7", True])
def test_a_bad_seed_is_refused_at_open_and_takes_no_slot(seed):
    model = tiny("ar")
    e = engine(model, DecoderSettings("ar", sampling=GREEDY), max_sessions=1)
    with pytest.raises(ValueError, match="seed") as ex:
        e.open(*context(model.cfg), seed=seed)
    one_line(ex, repr(seed))
    assert e.free_rows == [0]
    e.open(*context(model.cfg), seed=2**64 - 1).step(1)  # the whole range a generator takes


@pytest.mark.parametrize("start_step", [-1, 1.5, None])
def test_a_bad_start_step_is_refused(start_step):
    model = tiny("ar")
    e = engine(model, DecoderSettings("ar", sampling=GREEDY), max_sessions=1)
    with pytest.raises(ValueError, match="start_step") as ex:
        e.open(*context(model.cfg), start_step=start_step)
    one_line(ex)
    assert e.free_rows == [0]
    assert e.open(*context(model.cfg), start_step=np.int64(4)).game_step == 6


@pytest.mark.parametrize("objective,decoder", [("ar", "diagonal"), ("block_diffusion", "block_diffusion")])
def test_context_image_tokens_must_be_image_codes(objective, decoder):
    """Ids past the codebook (an action id, MASK, past the vocabulary) or below 0 failed inside
    the forward with an IndexError, after the cache row was reset; float tokens were truncated."""
    model = tiny(objective)
    cfg = model.cfg
    e = engine(model, DecoderSettings(decoder, sampling=GREEDY), max_sessions=1)
    frames, actions = context(cfg)
    for bad in (frames + cfg.codebook_size, frames - cfg.codebook_size, frames.clone().fill_(cfg.mask_id),
                frames.float() + 0.5):
        with pytest.raises(ValueError, match="image tokens") as ex:
            e.open(bad, actions)
        one_line(ex)
        assert e.free_rows == [0]
    # Token shards store codes as uint16: those are taken as they are.
    s = e.open(frames.numpy().astype(np.uint16), actions, seed=3)
    t = engine(model, DecoderSettings(decoder, sampling=GREEDY)).open(frames, actions, seed=3)
    s.step(2)
    t.step(2)
    assert torch.equal(s.last_frame, t.last_frame)


@pytest.mark.parametrize("objective,decoder", [("ar", "ar"), ("block_diffusion", "block_diffusion")])
def test_action_tokens_given_as_tensors_must_be_action_ids_of_the_right_shape(objective, decoder):
    """Tensors are tokens, not actions: an image code in an action slot dreamed silently from
    the wrong input, an id past the vocabulary or a wrong shape failed inside the forward. Now
    each is refused before the cache is touched, and the session goes on as if never asked."""
    model = tiny(objective, sharpen=3.0)
    cfg = model.cfg
    K = cfg.codebook_size
    frames, actions = context(cfg)
    e = engine(model, DecoderSettings(decoder, sampling=GREEDY), max_sessions=1)
    for bad in (torch.tensor([[3], [4]]), torch.tensor([[K, K], [K, K]]),
                torch.tensor([[K + cfg.action_ids], [K]]), torch.tensor([[K + 0.0], [K]])):
        with pytest.raises(ValueError, match="action tokens") as ex:
            e.open(frames, bad)
        one_line(ex)
    s = e.open(frames, torch.tensor([[K + a] for a in actions]), seed=1)
    ref = engine(model, DecoderSettings(decoder, sampling=GREEDY)).open(frames, actions, seed=1)
    for bad in (torch.tensor([3]), torch.tensor([500]), torch.tensor([K + 1, K + 2]), torch.tensor([-1])):
        with pytest.raises(ValueError, match="action tokens") as ex:
            s.step(bad)
        one_line(ex)
    for a in (1, 5, 9):
        s.step(torch.tensor([K + a]))
        ref.step(a)
        assert torch.equal(s.last_frame, ref.last_frame)


def test_a_step_of_no_sessions_is_nothing():
    model = tiny("ar")
    e = engine(model, DecoderSettings("ar", sampling=GREEDY))
    assert e.step({}) == {}


def test_a_session_of_another_engine_is_refused():
    """Its row is a row of its own engine's cache: stepping it here read and wrote whichever
    session held that row in this one."""
    model = tiny("block_diffusion")
    e1 = engine(model, DecoderSettings(sampling=GREEDY), max_sessions=1)
    e2 = engine(model, DecoderSettings(sampling=GREEDY), max_sessions=1)
    s1, s2 = e1.open(*context(model.cfg, seed=0)), e2.open(*context(model.cfg, seed=1))
    kv = e2.cache.kv.clone()
    with pytest.raises(ValueError, match="another engine"):
        e2.step({s1: 1, s2: 1})
    assert torch.equal(e2.cache.kv, kv)


def test_a_full_engine_counts_its_sessions_not_its_shadow_rows():
    """With action guidance the cache holds a shadow row per session; the message counted those."""
    model = tiny("block_diffusion")
    e = engine(model, DecoderSettings(guidance=1.0, sampling=GREEDY), max_sessions=1)
    e.open(*context(model.cfg))
    with pytest.raises(RuntimeError, match="all 1 session slots"):
        e.open(*context(model.cfg))


@pytest.mark.parametrize("objective,decoder,kw", [
    ("ar", "ar", {}), ("ar", "diagonal", dict(window=1)), ("ar", "diagonal", dict(window=3)),
    ("block_diffusion", "block_diffusion", dict(steps=3, threshold=0.3))])
def test_sessions_with_sinks_and_contexts_longer_than_the_window_dream_as_alone(objective, decoder, kw):
    """Contexts of one frame to twice the window, sink frames, sessions opened out of row order,
    one closed and its row reused mid-dream: each session dreams what it dreams alone, and
    between frames the next-token decoders keep every token of the newest frame but its last
    in the cache, and nothing in scratch."""
    model = tiny(objective, sharpen=3.0)
    cfg = model.cfg
    N, L = cfg.tokens_per_frame, cfg.block_len
    settings = DecoderSettings(decoder, sampling=SamplingSettings(temperature=1.0), **kw)
    ctxs = [context(cfg, c, seed=c) for c in (1, 2, 2 * cfg.frames)]
    plan = [1, 3, 5, 7, 2]

    def solo(i):
        s = engine(model, settings, sink=1, max_sessions=1).open(*ctxs[i], seed=100 + i)
        return [s.step(a) and s.last_frame.clone() for a in plan]

    alone = [solo(i) for i in range(3)]
    e = engine(model, settings, sink=1, max_sessions=3)
    gone = e.open(*ctxs[0], seed=7)  # row 0, closed after the first frame
    s2, s1 = e.open(*ctxs[2], seed=102), e.open(*ctxs[1], seed=101)
    got = {0: [], 1: [], 2: []}
    sess = {1: s1, 2: s2}
    for t in range(len(plan) + 1):
        live = {s: plan[len(got[i])] for i, s in sess.items() if len(got[i]) < len(plan)}
        if t == 0:
            live[gone] = 4
        e.step(live)
        for i, s in sess.items():
            if s in live:
                got[i].append(s.last_frame.clone())
        if t == 0:
            gone.close()
            sess[0] = e.open(*ctxs[0], seed=100)  # takes row 0 mid-dream
        for s in live:
            if objective != "ar" or s.closed:
                continue
            c, r = e.cache, s.row
            newest = int(c.order[r, int(c.count[r]) - 1])
            kept = c.filled[r, newest * L:(newest + 1) * L]
            assert bool(kept[:N - 1].all()) and not bool(kept[N - 1:].any())
            assert not bool(c.filled[r, c.block_slots:].any())
    assert sess[0].row == gone.row
    for i in range(3):
        assert len(got[i]) == len(plan)
        assert all(torch.equal(x, y) for x, y in zip(alone[i], got[i]))


def test_next_token_sessions_whose_steps_differ_share_a_batch():
    """`steps` is a block-diffusion setting; the scheduler grouped sessions by it whatever their
    decoder, so a diagonal session told steps=8 split every tick into two model steps."""
    import queue

    from worldsim.inference.scheduler import Scheduler, Start

    model = tiny("ar")
    e = engine(model, DecoderSettings("diagonal", sampling=GREEDY), max_sessions=2)
    sched = Scheduler(e, CRAFTER_SPACE, 0).start()
    try:
        frames: queue.Queue = queue.Queue()
        sids = []
        for i in range(2):
            f, a = context(model.cfg, seed=i)
            sid, opened = sched.open(Start(f.numpy(), a, seed=i), frames.put)
            opened.result(30)
            assert frames.get(timeout=30).seq == -1  # the context frame it starts from
            sids.append(sid)
        assert sched.configure(sids[1], steps=8).result(30).steps == 8
        with sched._cv:  # the worker waits: both inputs are in before it looks
            for sid in sids:
                sched.submit(sid, 3, 0)
        outs = [frames.get(timeout=30) for _ in sids]
        assert [o.timings["batch"] for o in outs] == [2.0, 2.0] and sched.batches == 1
    finally:
        sched.stop()


def test_a_generator_list_must_have_one_generator_per_row():
    """`zip` dropped the rows past the shorter list: three rows with two generators sampled two."""
    from worldsim.inference.sampling import sample

    logits = torch.randn(3, 5, 10)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    with pytest.raises(ValueError, match="one generator per row"):
        sample(logits, SamplingSettings(), gens)


def test_a_command_whose_waiter_gave_up_leaves_the_worker_serving():
    """A waiter that cancels its command's future (a connection that ends while its config
    waits) made the worker's set_result raise: the thread died and no session got a frame."""
    import queue

    from worldsim.inference.scheduler import Scheduler, Start

    model = tiny("block_diffusion")
    e = engine(model, DecoderSettings("block_diffusion", sampling=GREEDY), max_sessions=2)
    sched = Scheduler(e, CRAFTER_SPACE, 0).start()
    try:
        frames: queue.Queue = queue.Queue()
        f, a = context(model.cfg, seed=0)
        sid, opened = sched.open(Start(f.numpy(), a, seed=0), frames.put)
        opened.result(30)
        assert frames.get(timeout=30).seq == -1
        with sched._cv:  # the worker waits: the command is queued and cancelled before it runs
            fut = sched.configure(sid, paused=False)
            assert fut.cancel()
        sched.submit(sid, 3, 7)
        assert frames.get(timeout=30).seq == 7  # the worker is alive and stepping
        assert sched.configure(sid, steps=3).result(30).steps == 3
    finally:
        sched.stop()


def test_an_action_the_space_does_not_hold_is_refused_at_submit_and_the_batch_goes_on():
    """Submit took any action; the batch it joined then failed in the engine, and the scheduler
    closed every session of that batch."""
    import queue

    from worldsim.inference.scheduler import Scheduler, Start

    model = tiny("block_diffusion")
    e = engine(model, DecoderSettings("block_diffusion", sampling=GREEDY), max_sessions=2)
    sched = Scheduler(e, CRAFTER_SPACE, 0).start()
    try:
        outs = [queue.Queue(), queue.Queue()]
        sids = []
        for i in range(2):
            f, a = context(model.cfg, seed=i)
            sid, opened = sched.open(Start(f.numpy(), a, seed=i), outs[i].put)
            opened.result(30)
            assert outs[i].get(timeout=30).seq == -1
            sids.append(sid)
        for bad in (99, -1, 2.5, "up"):
            with pytest.raises(ValueError, match="crafter actions"):
                sched.submit(sids[0], bad, 5)
        with sched._cv:  # both in before the worker looks: one batch
            sched.submit(sids[0], 3, 6)
            sched.submit(sids[1], 4, 6)
        assert [outs[i].get(timeout=30).seq for i in range(2)] == [6, 6]
    finally:
        sched.stop()
