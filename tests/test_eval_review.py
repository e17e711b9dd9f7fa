"""`worldsim eval` review: errors that name the real cause before the slow work, and `--compare`
of reports run with other settings."""

import json
import shutil

import pytest

from worldsim.errors import WorldsimError
from worldsim.evaluation import EvalSettings, evaluate
from worldsim.evaluation.report import compare


@pytest.fixture(scope="module")
def tiny_bundle(tiny_tokens, tmp_path_factory):
    from worldsim.train import TrainSettings, train

    tok, shards = tiny_tokens
    out = tmp_path_factory.mktemp("eval_review") / "wm"
    train(shards, tok, out, objective="block_diffusion", preset="tiny",
          settings=TrainSettings(steps=2, batch=2, val_every=1000, val_batches=1, warmup=1), progress=False)
    return out


FAST = dict(episodes=1, horizon=1, videos=0, teacher_forced=False, game=False, device="cpu")


def test_a_store_with_no_held_out_episode_says_so(tiny_bundle, crafter_store, tmp_path):
    """A store whose every episode was trained on (here: a bundle trained with no validation
    split, judged on its training store) read "no readable episode has 4 frames (context +
    horizon); lower --horizon", which no horizon cures."""
    bundle = tmp_path / "wm"
    shutil.copytree(tiny_bundle, bundle)
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["training"]["val_fraction"] = 0.0
    (bundle / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WorldsimError) as e:
        evaluate(bundle, crafter_store, EvalSettings(**FAST), out=tmp_path / "out", progress=False)
    assert "held out" in str(e.value) and "--horizon" not in str(e.value)


def test_episodes_shorter_than_the_models_window_are_not_blamed_on_the_horizon(tiny_bundle, tmp_path):
    """Windows hold a whole model window (4 frames for the tiny model) for the action gap: with
    context + horizon 2, episodes of 3 frames told the user to lower --horizon."""
    from worldsim.data.collect import collect_crafter

    store = tmp_path / "short"
    collect_crafter(store, episodes=2, steps=2, seed=11, size=72, workers=1, progress=False)
    with pytest.raises(WorldsimError) as e:
        evaluate(tiny_bundle, store, EvalSettings(**FAST), out=tmp_path / "out", progress=False)
    assert "4 frames" in str(e.value) and "model's window" in str(e.value)
    assert "lower --horizon" not in str(e.value)


def test_an_idm_of_another_frame_size_is_refused_before_the_run(tiny_bundle, unseen_review_store, tmp_path,
                                                                monkeypatch):
    """The IDM's pooled trunk reads frames of any size, so an IDM trained at 54x54 scored a
    72x72 store's dreams without a word (and only after every rollout)."""
    import worldsim.idm as idm_mod
    from worldsim import bundle
    from worldsim.envs.base import ActionSpace
    from worldsim.tokenizers.action import action_tokenizer_from_config

    cfg = bundle.read_config(tiny_bundle)
    space = ActionSpace.from_dict(cfg["action_space"])
    other = idm_mod.IDM(idm_mod.InverseDynamics(idm_mod.IDMConfig(height=54, width=54)).eval(),
                        action_tokenizer_from_config(cfg["action_tokenizer"]), space, {})
    monkeypatch.setattr(idm_mod, "load_idm", lambda folder, device="cpu": other)
    with pytest.raises(WorldsimError) as e:
        evaluate(tiny_bundle, unseen_review_store, EvalSettings(**FAST), idm=tmp_path, out=tmp_path / "out",
                 progress=False)
    assert "54x54" in str(e.value) and "72x72" in str(e.value)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def unseen_review_store(tmp_path_factory):
    from worldsim.data.collect import collect_crafter

    out = tmp_path_factory.mktemp("unseen_review") / "store"
    collect_crafter(out, episodes=2, steps=12, seed=7, size=72, workers=1, progress=False)
    return out


def _report(folder, context=1, temperature=0.0, draws=1, data="data/crafter"):
    r = {"format": "worldsim.eval", "version": 1, "bundle": "wm", "data": data,
         "settings": {"context": context, "horizon": 15, "temperature": temperature, "draws": draws, "seed": 0},
         "episodes": {"count": 16}, "speed": {},
         "quality": {"ar": {"rollout": {"all": {"overall": {"psnr": 20.0}}}},
                     "copy-last": {"rollout": {"all": {"overall": {"psnr": 17.0}}}}}}
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps(r))
    return folder


def test_compare_names_the_settings_two_reports_differ_in(tmp_path):
    """The legend named each report's horizon and episodes only: a report dreamed from 3 context
    frames at temperature 1 sat beside one from 1 frame, greedy, as if alike."""
    a = _report(tmp_path / "a")
    b = _report(tmp_path / "b", context=3, temperature=1.0)
    out = compare([a, b])
    assert "context (1, 3)" in out and "temperature (0.0, 1.0)" in out
    assert "horizon (" not in out and "draws (" not in out
    same = compare([a, _report(tmp_path / "c")])
    assert "differ" not in same


def test_too_few_windows_are_blamed_on_what_limits_them(tmp_path):
    """The warning said "only 2 episodes of S have 16 frames" where every episode had 60 frames
    and only 2 were held out from training."""
    import warnings

    import numpy as np

    from worldsim.data.store import EpisodeStore
    from worldsim.envs.crafter import CRAFTER_SPACE
    from worldsim.evaluation.episodes import select_windows

    store = EpisodeStore.create(tmp_path / "s", env="crafter", action_space=CRAFTER_SPACE,
                                frame_size=(8, 8), fps=10)
    rng = np.random.default_rng(0)
    for i, t in enumerate((20, 20, 6)):
        store.write_episode(f"{i:06d}", rng.integers(0, 256, (t, 8, 8, 3), dtype=np.uint8),
                            rng.integers(0, 17, t - 1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert len(select_windows(store, ["000000", "000001"], 4, 10, seed=0)) == 2
        assert len(select_windows(store, ["000000", "000001", "000002"], 4, 10, seed=0)) == 2
    said = [str(w.message) for w in caught]
    assert "only 2 of its episodes are held out from training" in said[0]
    assert "only 2 of its 3 held-out episodes have 10 frames" in said[1]


def test_compare_shows_the_models_figures_under_its_decoders_only(tmp_path):
    """The action gap and the tokenizer's flicker were repeated under the game and copy-last
    columns, as if those had them."""
    a = _report(tmp_path / "a")
    r = json.loads((a / "report.json").read_text())
    r["action_sensitivity"] = {"all": {"gap": 0.7966}}
    (a / "report.json").write_text(json.dumps(r))
    gap_row = next(line for line in compare([a, _report(tmp_path / "b")]).splitlines()
                   if line.startswith("| action gap"))
    cells = [c.strip() for c in gap_row.strip("|").split("|")][1:]
    assert cells == ["0.7966", "", "-", ""]  # a's ar, a's copy-last, b's ar (no gap), b's copy-last


def test_a_report_on_another_game_leaves_out_crafters_rows_and_says_why(tmp_path, capsys):
    """On a MineRL store the scroll and own-world rows were dashes, and tiles from nowhere a
    figure that reads Crafter's tile map, with no word of why."""
    from _serving import scene_store, tiny_bundle
    from worldsim.cli import main

    bundle = tiny_bundle(tmp_path / "b", game="minerl")
    store = scene_store(tmp_path / "s", game="minerl", steps=12)
    assert main(["eval", "--bundle", str(bundle), "--data", str(store), "--episodes", "1", "--horizon", "3",
                 "--videos", "0", "--no-teacher-forced", "--threads", "1", "--no-progress",
                 "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "(minerl) the rows that read Crafter's view are left out" in md
    headline = md.split("## Headline")[1].split("\n\n")[1]
    assert "PSNR dB" in headline and "scroll agreement" not in headline and "tiles from nowhere" not in headline
