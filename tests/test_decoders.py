"""Decoders describe themselves, and the cached ones draw what the reference loops draw."""

import dataclasses

import pytest
import torch

from worldsim.envs.crafter import CRAFTER_SPACE
from worldsim.tokenizers.action import make_action_tokenizer
from worldsim.inference import decode_ar, decode_block_diffusion, decode_diagonal, plain
from worldsim.inference.engine import (DECODERS, DecoderSettings, Engine, auto_decoder, graphs_by_default,
                                       valid_decoders)
from worldsim.inference.sampling import GREEDY

from _models import tiny_model as tiny

MODULES = [decode_ar, decode_diagonal, decode_block_diffusion]


def engine(model, decoder, **kw):
    act = make_action_tokenizer(CRAFTER_SPACE, offset=model.cfg.codebook_size)
    return Engine(model, None, act, decoder, **kw)


def test_registry_valid_decoders_and_auto_come_from_the_modules():
    assert DECODERS == {m.NAME: m for m in MODULES}
    assert valid_decoders("ar") == ["ar", "diagonal"]
    assert valid_decoders("block_diffusion") == ["block_diffusion"]
    assert auto_decoder("ar") == "diagonal" and auto_decoder("block_diffusion") == "block_diffusion"
    for objective in ("ar", "block_diffusion"):
        d = DecoderSettings().resolve(objective)
        assert d.name == auto_decoder(objective) and DECODERS[d.name].OBJECTIVE == objective


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.NAME)
def test_settings_are_frozen_and_strict(module):
    s = module.Settings.from_dict({})
    assert s == module.Settings()
    for f in dataclasses.fields(module.Settings):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(s, f.name, getattr(s, f.name))
    with pytest.raises(ValueError, match=r"unknown .* setting.*'beam_width'"):
        module.Settings.from_dict({"beam_width": 4})
    assert module.Settings.from_dict(dataclasses.asdict(s)) == s


def test_settings_check_types_and_ranges():
    bd, diag = decode_block_diffusion.Settings, decode_diagonal.Settings
    assert bd.from_dict({"steps": 8, "threshold": 1}) == bd(steps=8, threshold=1.0)
    for bad in ({"steps": "4"}, {"steps": 2.5}, {"steps": True}, {"graphs": 1}, {"threshold": "high"}):
        with pytest.raises(ValueError, match=f"setting '{next(iter(bad))}' must be"):
            bd.from_dict(bad)
    for bad in ({"steps": 0}, {"threshold": 1.5}, {"threshold": -0.1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            bd.from_dict(bad)
    with pytest.raises(ValueError, match="window must be at least 1"):
        diag.from_dict({"window": 0})
    with pytest.raises(ValueError, match="must be a map"):
        diag.from_dict([("window", 2)])


def test_decoder_settings_resolve_checks_the_decoders_own_settings():
    with pytest.raises(ValueError, match="steps must be at least 1"):
        DecoderSettings("block_diffusion", steps=0).resolve("block_diffusion")
    with pytest.raises(ValueError, match="window must be at least 1"):
        DecoderSettings("diagonal", window=0).resolve("ar")
    # Settings another decoder would use are left alone; `graphs` goes off where it does not apply.
    d = DecoderSettings("diagonal", steps=0, graphs=True).resolve("ar")
    assert d.own() == decode_diagonal.Settings(window=2) and not d.graphs
    assert DecoderSettings("block_diffusion", steps=3, threshold=0.5, graphs=True).resolve(
        "block_diffusion").own() == decode_block_diffusion.Settings(steps=3, threshold=0.5, graphs=True)


def test_graph_replay_is_the_default_on_cuda_only_where_it_applies():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # device objects only: no GPU needed
    auto = DecoderSettings().resolve("block_diffusion")
    assert auto.graphs is None and auto.own().graphs is False  # left to the engine
    assert graphs_by_default(auto, cuda) and not graphs_by_default(auto, cpu)
    assert not graphs_by_default(dataclasses.replace(auto, graphs=False), cuda)  # --no-graphs
    assert graphs_by_default(dataclasses.replace(auto, graphs=True), cpu)  # asked for: static buffers
    assert not graphs_by_default(DecoderSettings(guidance=1.0).resolve("block_diffusion"), cuda)
    assert not graphs_by_default(DecoderSettings().resolve("ar"), cuda)  # diagonal: no replays
    # On the CPU an engine with the default decoder makes no graphs.
    model = tiny("block_diffusion")
    e = Engine(model, None, make_action_tokenizer(CRAFTER_SPACE, offset=model.cfg.codebook_size))
    s = e.open(torch.zeros(1, model.cfg.tokens_per_frame, dtype=torch.long), [])
    s.step(0)
    assert e.graphs is None


@pytest.mark.parametrize("name,settings", [("ar", {}), ("diagonal", {"window": 1}), ("diagonal", {"window": 3}),
                                           ("block_diffusion", {"steps": 3}), ("block_diffusion", {"steps": 16})])
def test_passes_per_frame_is_what_a_frame_takes(name, settings):
    module = DECODERS[name]
    model = tiny(module.OBJECTIVE)
    d = DecoderSettings(name, sampling=GREEDY, **settings)
    want = module.passes_per_frame(model.cfg, d.resolve(module.OBJECTIVE).own())
    assert want == d.passes_per_frame(model.cfg)
    s = engine(model, d).open(torch.zeros(2, model.cfg.tokens_per_frame, dtype=torch.long), [1])
    for a in (1, 2):
        assert s.step(a)[1].passes == want
    r, c = model.cfg.grid
    assert want == {"ar": r * c, "diagonal": (r - 1) * min(settings.get("window", 0), c) + c,
                    "block_diffusion": settings.get("steps")}[name]


def context(cfg, c, seed):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, cfg.codebook_size, (c, cfg.tokens_per_frame), generator=g)
    actions = torch.randint(0, 17, (c + 1,), generator=g).tolist()  # c-1 for the context, 2 to dream
    return frames, actions


@pytest.mark.parametrize("name,steps,rope", [("ar", 4, "1d"), ("diagonal", 4, "1d"), ("block_diffusion", 4, "1d"),
                                             ("block_diffusion", 16, "1d"), ("ar", 4, "3d"),
                                             ("block_diffusion", 4, "3d")])
@pytest.mark.parametrize("seed", [0, 1])
def test_cached_decoder_matches_its_reference_loop(name, steps, rope, seed):
    """Greedy, until the window fills (after that a cached block keeps keys computed with older
    frames in view, and the loops part by design). Diagonal's reference is ar's loop: with
    w = cols it is ar, and its golden frames pin w = 2."""
    objective = DECODERS[name].OBJECTIVE
    model = tiny(objective, sharpen=6.0, rope=rope)
    cfg = model.cfg
    c = 2  # with 2 dreamed frames, the window (frames - 1 = 3 blocks) is not yet full
    frames, actions = context(cfg, c, seed)
    window = cfg.grid[1] if name == "diagonal" else 2
    s = engine(model, DecoderSettings(name, steps=steps, window=window, sampling=GREEDY)).open(frames, actions[:c - 1])
    cached = []
    for a in actions[c - 1:]:
        s.step(a)
        cached.append(s.last_frame[0].clone())
    act_tokens = (cfg.codebook_size + torch.tensor(actions))[None, :, None]  # (1, c+1, 1)
    ref = plain.rollout(model, frames[None], act_tokens[:, :c], act_tokens[:, c:], GREEDY, steps=steps)
    assert ref.shape == (1, len(cached), cfg.tokens_per_frame)
    for t, frame in enumerate(cached):
        assert torch.equal(frame, ref[0, t]), f"frame {t}"


def test_the_sharpened_models_frames_depend_on_their_inputs():
    """What makes the comparison above able to fail: other actions or other step counts give
    other frames."""
    for objective, steps in (("ar", [4]), ("block_diffusion", [1, 4, 16])):
        model = tiny(objective, sharpen=6.0)
        cfg = model.cfg
        frames, actions = context(cfg, 2, 0)
        act = (cfg.codebook_size + torch.tensor(actions))[None, :, None]
        other = act.clone()
        other[:, 1] = cfg.codebook_size + (actions[1] + 1) % 17
        runs = [plain.rollout(model, frames[None], a[:, :2], a[:, 2:], GREEDY, steps=k)
                for a in (act, other) for k in steps]
        assert all(not torch.equal(x, y) for i, x in enumerate(runs) for y in runs[i + 1:])


@pytest.mark.parametrize("peak", [False, True])
def test_peak_order_keeps_rare_tokens_at_their_rate(monkeypatch, peak):
    """Every position's next code is 1 with probability 0.8 and 2 with 0.2, whatever the context.
    Keeping the most probable of the drawn tokens (MaskGIT's order) keeps the common draws first
    and draws the rare ones again, so a frame ends with far fewer than 20% rare codes: the bias
    that makes a dream's new terrain plainer than the world's. Keeping the drawn tokens at the
    most peaked positions keeps a rare draw as readily as a common one: about 20%."""
    model = tiny("block_diffusion")
    cfg = model.cfg
    probs = torch.zeros(cfg.codebook_size)
    probs[1], probs[2] = 0.8, 0.2

    def fixed_logits(model, cache, tokens, pos, prev, n):
        return probs.log().expand(tokens.shape[0], n, -1).clone()  # (B, N, K)

    monkeypatch.setattr(decode_block_diffusion, "pass_logits", fixed_logits)
    d = DecoderSettings("block_diffusion", steps=4, peak=peak,
                        sampling=dataclasses.replace(GREEDY, temperature=1.0))
    frames, _ = context(cfg, 1, 0)
    rare = []
    for seed in range(32):
        s = engine(model, d).open(frames, [], seed=seed)
        s.step(1)
        rare.append((s.last_frame[0] == 2).float().mean())
    rate = float(torch.stack(rare).mean())
    assert (0.17 < rate < 0.23) if peak else rate < 0.12
