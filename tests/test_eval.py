"""`worldsim eval`: the report folder, its repeatability, corrupt episodes, decoder specs, and
the action-sensitivity gap."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from worldsim.cli import main
from worldsim.errors import WorldsimError

from _scripts import load_script

REPORT_FILES = ("report.json", "report.md", "psnr.png", "ssim.png", "changed_tiles.png",
                "rollout_00.mp4", "rollouts.gif")


@pytest.fixture(scope="module")
def tiny_bundle(tiny_tokens, tmp_path_factory):
    from worldsim.train import TrainSettings, train

    tok, shards = tiny_tokens
    out = tmp_path_factory.mktemp("eval") / "wm"
    train(shards, tok, out, objective="block_diffusion", preset="tiny",
          settings=TrainSettings(steps=2, batch=2, val_every=1000, val_batches=1, warmup=1), progress=False)
    return out


def _eval(bundle, data, out, *extra):
    return main(["eval", "--bundle", str(bundle), "--data", str(data), "--episodes", "3", "--horizon", "4",
                 "--videos", "1", "--threads", "1", "--no-progress", "--out", str(out), *extra])


def _numbers(report: dict) -> dict:
    return {k: report[k] for k in ("quality", "tokenizer", "action_sensitivity", "episodes", "bundle_hash")}


@pytest.fixture(scope="module")
def unseen_store(tmp_path_factory):
    """Crafter episodes from seeds the model never saw: a store `worldsim eval` uses whole."""
    from worldsim.data.collect import collect_crafter

    out = tmp_path_factory.mktemp("unseen") / "store"
    collect_crafter(out, episodes=3, steps=20, seed=7, size=72, workers=1, progress=False)
    return out


def test_eval_writes_every_report_file_and_repeats_with_the_same_seed(tiny_bundle, unseen_store, tmp_path, capsys):
    other = unseen_store
    assert _eval(tiny_bundle, other, tmp_path / "a") == 0
    summary = capsys.readouterr().out
    for name in REPORT_FILES:
        assert (tmp_path / "a" / name).stat().st_size > 0, name
    r = json.loads((tmp_path / "a" / "report.json").read_text())
    assert r["episodes"]["count"] == 3 and r["episodes"]["source"].startswith("whole store")
    assert r["settings"]["decoders"] == ["block_diffusion:4"]  # every decoder valid for the model
    q = r["quality"]
    assert set(q) == {"block_diffusion:4", "game", "copy-last", "tokenizer"}  # a store from `worldsim collect`
    game = q["game"]["rollout"]["all"]["overall"]
    assert 0 < game["psnr"] < 100 and "teacher_forced" not in q["game"]
    assert game["scroll_agreement"] is None or 0 <= game["scroll_agreement"] <= 1
    bd = q["block_diffusion:4"]["rollout"]["all"]
    assert len(bd["per_step"]["psnr"]) == 4 and 0 < bd["overall"]["psnr"] < 100
    assert "teacher_forced" in q["block_diffusion:4"]
    assert q["copy-last"]["teacher_forced"]["all"]["overall"]["changed_tile_acc"] in (0.0, None)
    assert q["copy-last"]["rollout"]["all"]["overall"]["new_tiles_per_frame"] == 0  # a frozen view
    # The keys in each source's own world: the matcher learnt from the store's moves (all three
    # episodes are judged, so from all of them); a frozen view never walks, the game obeys its rule.
    assert r["ways"]["library_episodes"] == 3 and r["ways"]["library_moves"] > 0 and r["ways"]["library_judged_too"]
    frozen = q["copy-last"]["rollout"]["all"]["overall"]
    assert frozen["open_way_moves"] > 0 and frozen["own_way_follow"] == 0
    assert game["open_way_moves"] > 0 and game["own_way_follow"] > 0.8
    assert game["wall_walks"] in (0.0, None)
    assert bd["overall"]["new_tiles_per_frame"] >= 0 and len(bd["per_step"]["new_tiles_per_frame"]) == 4
    assert r["speed"]["block_diffusion:4"]["ms_per_frame_median"] > 0
    assert r["speed"]["block_diffusion:4"]["passes_per_frame"] == 4
    assert r["action_sensitivity"]["all"]["tokens"] > 0
    assert 0 <= r["tokenizer"]["all"]["flicker"] <= 1
    assert len(r["bundle_hash"]) == 64 and "worldsim" in r["code"]
    md = (tmp_path / "a" / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| metric"))
    assert header == "| metric | block_diffusion:4 | game | copy-last | tokenizer |"
    assert "The game column is Crafter itself" in md and "Own world: each source judged" in md
    assert "the store holds no episodes but those judged here" in md
    assert any(line.startswith("| keys followed on an open way, own world |") for line in md.splitlines())
    # The model's targets are on day frames: the one-step day figure has its own headline row.
    day_row = next(line for line in md.splitlines() if line.startswith("| changed-tile acc, 1 step, day |"))
    day_tf = q["block_diffusion:4"]["teacher_forced"]["day"]["overall"]["changed_tile_acc"]
    assert day_row.split("|")[2].strip() == ("-" if day_tf is None else f"{100 * day_tf:.1f}%")
    assert summary.startswith("eval (3 episodes x 4 frames): block_diffusion:4:") and "report.md" in summary
    assert "; game: " in summary

    assert _eval(tiny_bundle, other, tmp_path / "b") == 0
    again = json.loads((tmp_path / "b" / "report.json").read_text())
    assert _numbers(again) == _numbers(r)

    capsys.readouterr()
    assert main(["eval", "--compare", str(tmp_path / "a"), str(tmp_path / "b" / "report.json")]) == 0
    table = capsys.readouterr().out
    assert "1:a block_diffusion:4" in table and "2:b block_diffusion:4" in table and "changed-tile acc" in table
    assert "1:a game" in table and "tokenizer" not in table.splitlines()[3]


def test_eval_pools_sampling_draws_and_keeps_each(tiny_bundle, unseen_store, tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    args = ("--no-teacher-forced", "--videos", "0", "--temperature", "1.0")
    assert _eval(tiny_bundle, unseen_store, one, *args) == 0
    assert _eval(tiny_bundle, unseen_store, two, *args, "--draws", "2") == 0
    summary = capsys.readouterr().out.splitlines()[-1]
    a, b = (json.loads((d / "report.json").read_text())["quality"] for d in (one, two))
    for src in ("block_diffusion:4", "game"):
        first, pooled = a[src]["rollout"]["all"]["overall"], b[src]["rollout"]["all"]["overall"]
        draws = b[src]["rollout_draws"]
        assert len(draws) == 2 and "rollout_draws" not in a[src]
        assert draws[0] == first  # draw 0 is the single draw
        assert pooled["frames"] == 2 * first["frames"]
        assert pooled["changed_tiles"] == draws[0]["changed_tiles"] + draws[1]["changed_tiles"]
        assert min(d["psnr"] for d in draws) <= pooled["psnr"] <= max(d["psnr"] for d in draws)
    # The second draw samples anew: its dreams differ from the first (an untrained model at T 1).
    assert b["block_diffusion:4"]["rollout_draws"][1]["psnr"] != b["block_diffusion:4"]["rollout_draws"][0]["psnr"]
    assert b["copy-last"] == a["copy-last"]
    md = (two / "report.md").read_text()
    assert "drawn 2 times" in md and "### Each draw" in md
    section = md.split("### Each draw")[1].split("\n## ")[0].splitlines()
    for src in ("block_diffusion:4", "game"):
        assert [line.split("|")[2].strip() for line in section if line.startswith(f"| {src} | ")] == ["0", "1"]
    if b["block_diffusion:4"]["rollout"]["all"]["overall"]["scroll_agreement"] is not None:
        assert "over 2 draws (per draw" in summary
    with pytest.raises(SystemExit):
        _eval(tiny_bundle, unseen_store, tmp_path / "bad", "--draws", "0")


def test_eval_without_the_game_reference(tiny_bundle, unseen_store, tmp_path):
    assert _eval(tiny_bundle, unseen_store, tmp_path / "a", "--no-game", "--no-teacher-forced") == 0
    r = json.loads((tmp_path / "a" / "report.json").read_text())
    assert "game" not in r["quality"] and r["game"].startswith("not computed")


def test_eval_on_the_training_store_uses_its_held_out_episodes(tiny_bundle, crafter_store, unseen_store, tmp_path):
    from worldsim.bundle import read_config
    from worldsim.data.store import EpisodeStore, split_ids
    from worldsim.evaluation.episodes import held_out_ids

    cfg = read_config(tiny_bundle)
    want = split_ids(EpisodeStore(crafter_store).episode_ids(), 0.05)[1]
    ids, note = held_out_ids(EpisodeStore(crafter_store), cfg)
    assert note.startswith("validation split") and ids == want
    moved = tmp_path / "moved"  # the same episodes under another path are still the training store
    shutil.copytree(crafter_store, moved)
    assert held_out_ids(EpisodeStore(moved), cfg)[0] == want
    ids, note = held_out_ids(EpisodeStore(unseen_store), cfg)  # same ids, other episodes
    assert note.startswith("whole store") and ids == EpisodeStore(unseen_store).episode_ids()


def test_shards_of_two_stores_keep_each_stores_held_out_episodes(tiny_tokens, crafter_store, unseen_store, tmp_path):
    """A model trained on two stores tokenized together judges each store on the episodes its
    training held out: the first's ids are its own, the second's were split as `<folder>/<id>`."""
    from worldsim.data.shards import tokenize_store
    from worldsim.data.store import EpisodeStore, split_ids
    from worldsim.evaluation.episodes import held_out_ids

    second = tmp_path / "second"
    shutil.copytree(unseen_store, second)
    tokenize_store([crafter_store, second], tiny_tokens[0], tmp_path / "sh", progress=False)
    cfg = {"training": {"shards": str(tmp_path / "sh"), "val_fraction": 0.4}}
    first_ids, second_ids = EpisodeStore(crafter_store).episode_ids(), EpisodeStore(second).episode_ids()
    _, val = split_ids(first_ids + [f"second/{i}" for i in second_ids], 0.4)
    want_first = sorted(i for i in val if "/" not in i)
    want_second = sorted(i[len("second/"):] for i in val if i.startswith("second/"))
    assert want_first and want_second and len(want_second) < len(second_ids)
    ids, note = held_out_ids(EpisodeStore(crafter_store), cfg)
    assert note.startswith("validation split") and ids == want_first
    ids, note = held_out_ids(EpisodeStore(second), cfg)
    assert note.startswith("validation split") and ids == want_second
    moved = tmp_path / "elsewhere"  # the second store moved: its episodes still say it was trained on
    shutil.copytree(second, moved)
    assert held_out_ids(EpisodeStore(moved), cfg)[0] == want_second
    third = tmp_path / "third"  # a store trained on by neither
    from worldsim.data.collect import collect_crafter
    collect_crafter(third, episodes=2, steps=20, seed=11, size=72, workers=1, progress=False)
    ids, note = held_out_ids(EpisodeStore(third), cfg)
    assert note.startswith("whole store") and ids == EpisodeStore(third).episode_ids()
    assert str(crafter_store) in note and str(second) in note


def test_a_smaller_store_collected_like_the_training_store_keeps_its_trained_episodes_out(
        tiny_bundle, crafter_store, tmp_path):
    """The first episodes of the training store's collection, collected again (the same seed
    and size), are the trained episodes: only the held-out ones among them are judged."""
    from worldsim.bundle import read_config
    from worldsim.data.collect import collect_crafter
    from worldsim.data.store import EpisodeStore, split_ids
    from worldsim.evaluation.episodes import held_out_ids

    cfg = read_config(tiny_bundle)
    trained = EpisodeStore(crafter_store).episode_ids()
    val = split_ids(trained, 0.05)[1]
    n = trained.index(val[-1]) + 1  # enough episodes to hold a held-out one
    sub = tmp_path / "sub"
    collect_crafter(sub, episodes=n, steps=40, seed=3, size=72, workers=1, progress=False)
    ids, note = held_out_ids(EpisodeStore(sub), cfg)
    assert note.startswith("validation split") and ids == val
    assert len(ids) < len(EpisodeStore(sub).episode_ids()) or n == 1


def test_a_corrupt_episode_is_skipped_with_a_warning_naming_it(tiny_bundle, unseen_store, tmp_path, capsys):
    data = tmp_path / "store"  # a store used whole: every sound episode is judged
    shutil.copytree(unseen_store, data)
    victim = sorted((data / "episodes").glob("*.npz"))[0]
    victim.write_bytes(victim.read_bytes()[:200])  # torn
    assert main(["eval", "--bundle", str(tiny_bundle), "--data", str(data), "--episodes", "3",
                 "--horizon", "2", "--videos", "0", "--no-teacher-forced", "--no-progress",
                 "--threads", "1", "--out", str(tmp_path / "r")]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "skipping" in line]
    assert len(err) == 1 and err[0].startswith("worldsim: warning: skipping corrupt episode")
    assert str(victim) in err[0]
    r = json.loads((tmp_path / "r" / "report.json").read_text())
    assert r["episodes"]["count"] == 2 and victim.stem not in {w["episode"] for w in r["episodes"]["windows"]}


def test_decoder_specs():
    from worldsim.evaluation import parse_decoder
    from worldsim.evaluation.run import decoder_label

    assert decoder_label(parse_decoder("diagonal:3")) == "diagonal:3"
    d = parse_decoder("block_diffusion:8:t0.9")
    assert (d.name, d.steps, d.threshold, d.guidance) == ("block_diffusion", 8, 0.9, 0.0)
    d = parse_decoder("block_diffusion:4:g1.5")
    assert (d.steps, d.threshold, d.guidance) == (4, None, 1.5)
    assert decoder_label(parse_decoder("block_diffusion:8:t0.9:g2")) == "block_diffusion:8:t0.9:g2"
    d = parse_decoder("block_diffusion:4:peak")
    assert d.peak and not parse_decoder("block_diffusion:4").peak
    assert decoder_label(d) == "block_diffusion:4:peak"
    assert decoder_label(parse_decoder("block_diffusion:8:t0.9:g2:peak")) == "block_diffusion:8:t0.9:g2:peak"
    for bad in ("beam", "ar:2", "diagonal:x", "block_diffusion:4:0.9", "block_diffusion:4:g1:g2",
                "block_diffusion:4:x1", "block_diffusion:4:peak:peak", "block_diffusion:4:peak1"):
        with pytest.raises(WorldsimError, match="bad decoder"):
            parse_decoder(bad)


def test_eval_refuses_a_decoder_the_model_was_not_trained_for(tiny_bundle, crafter_store, tmp_path, capsys):
    assert _eval(tiny_bundle, crafter_store, tmp_path / "r", "--decoder", "diagonal:2") == 2
    assert "does not fit a model trained with 'block_diffusion'" in capsys.readouterr().err


def _action_driven_episode(steps: int = 48, n: int = 16, k: int = 64, actions: int = 17):
    """Token frames drawn by the action taken: frame t+1 holds (3 a_t + i) mod K at slot i, so
    only a model that reads the action can predict it."""
    g = torch.Generator().manual_seed(0)
    acts = torch.randint(0, actions, (steps,), generator=g)
    first = torch.randint(0, k, (1, n), generator=g)
    rest = (3 * acts[:, None] + torch.arange(n)) % k
    return torch.cat([first, rest]), acts


def test_action_gap_is_positive_when_the_model_uses_actions_and_zero_when_it_cannot():
    from worldsim.evaluation.sensitivity import action_sensitivity
    from worldsim.model import WorldModel, preset_config
    from worldsim.objectives import Objective

    torch.manual_seed(0)
    cfg = preset_config("tiny", objective="ar")
    model = WorldModel(cfg)
    frames, acts = _action_driven_episode()
    K, F_ = cfg.codebook_size, cfg.frames
    act_tok = acts[:, None] + K  # (T, 1) action ids follow the image codes
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    starts = torch.arange(0, len(acts) - F_ + 1)
    for step in range(80):  # overfit the one episode
        pick = starts[torch.randint(0, len(starts), (8,))]
        fr = torch.stack([frames[s:s + F_] for s in pick])
        ac = torch.stack([act_tok[s:s + F_] for s in pick])
        loss, _ = Objective(model)(fr, ac)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    w = torch.arange(0, len(acts) - F_ + 1, F_)
    fr = torch.stack([frames[s:s + F_] for s in w])  # (W, F, N)
    ac = torch.stack([act_tok[s:s + F_] for s in w])  # (W, F, 1)
    changed = torch.ones(len(w), F_, dtype=torch.bool)
    changed[:, 0] = False
    gap = action_sensitivity(model, fr, ac, changed)["all"]["gap"]
    assert gap > 0.25, gap  # nats per token; the shuffled actions draw other frames
    with torch.no_grad():
        model.tok_emb.weight[K:K + cfg.action_ids] = 0  # every action looks the same
    zeroed = action_sensitivity(model, fr, ac, changed)["all"]
    assert abs(zeroed["gap"]) < 1e-6 and zeroed["loss_true"] > 0


def test_eval_decodes_at_the_bundles_recorded_temperature_unless_told(tiny_bundle, unseen_store, tmp_path):
    from worldsim.bundle import update_config

    b = tmp_path / "wm"
    shutil.copytree(tiny_bundle, b)

    def temperature(out, *extra) -> float:
        assert _eval(b, unseen_store, out, "--no-game", "--no-teacher-forced", "--videos", "0", *extra) == 0
        return json.loads((out / "report.json").read_text())["settings"]["temperature"]

    assert temperature(tmp_path / "a") == 0.0  # a bundle that records none: greedy, as before
    update_config(b, decoding={"temperature": 1.3})
    assert temperature(tmp_path / "b") == 1.3
    assert temperature(tmp_path / "c", "--temperature", "0.5") == 0.5


def test_pick_temperature_keeps_each_judgement_and_records_the_choice(tiny_bundle, unseen_store, tmp_path,
                                                                      monkeypatch, capsys):
    import worldsim.evaluation
    from worldsim.bundle import read_config

    pick = load_script("pick_temperature")
    b, out = tmp_path / "wm", tmp_path / "judged"
    shutil.copytree(tiny_bundle, b)
    argv = [str(b), "--data", str(unseen_store), "--temperatures", "0,1.5", "--episodes", "2", "--seeds", "0,1",
            "--out", str(out), "--threads", "1", "--no-progress"]
    assert pick.main(argv) in (0, 1)  # 1: no temperature keeps the untrained model above copy-last
    book = json.loads((out / "judgements.json").read_text())
    assert len(book) == 4 and all(j["real_scrolls"] >= j["agree"] >= 0 for j in book.values())
    assert "decoding" not in read_config(b)  # nothing written without --write

    # The same judgements are read back, not redone; make T 1.5 the clear winner and record it.
    for key, j in book.items():
        assert j["data"] == str(unseen_store.resolve())
        better = key.startswith("T1.5")
        j.update(real_scrolls=10, agree=9 if better else 3, psnr=30.0 if better else 10.0, copy_psnr=20.0,
                 psnr_steps=[30.0 if better else 10.0] * 5, copy_psnr_steps=[20.0] * 5)
    (out / "judgements.json").write_text(json.dumps(book))
    monkeypatch.setattr(worldsim.evaluation, "evaluate", lambda *a, **k: pytest.fail("judged again"))
    capsys.readouterr()
    assert pick.main(argv + ["--write"]) == 0
    assert "chosen: temperature 1.5" in capsys.readouterr().out
    rec = read_config(b)["decoding"]
    assert rec["temperature"] == 1.5 and rec["chosen_on"]["real_scrolls"] == 20
    assert rec["chosen_on"]["scroll_agreement"] == 0.9

    # The same weights on another store are judged anew, not read from this store's book.
    other = tmp_path / "other-store"
    shutil.copytree(unseen_store, other)
    with pytest.raises(pytest.fail.Exception, match="judged again"):
        pick.main([str(other) if a == str(unseen_store) else a for a in argv])

    # A torn book (a kill mid-write) is judged again with a warning, not a traceback.
    (out / "judgements.json").write_text('{"T0-s0')
    with pytest.raises(pytest.fail.Exception, match="judged again"):
        pick.main(argv)
    assert "cannot be read" in capsys.readouterr().err
    (out / "judgements.json").write_text(json.dumps(book))

    # New weights are judged anew: the book is keyed by the weights' hash.
    monkeypatch.setattr(pick, "weights_hash", lambda folder: "other")
    with pytest.raises(pytest.fail.Exception, match="judged again"):
        pick.main(argv)
    # and where none of their temperatures passes, the choice made for the old weights goes.
    assert read_config(b)["decoding"]["chosen_on"]["weights"] != "other"
    for j in book.values():
        j.update(weights="other", psnr=10.0, psnr_steps=[10.0] * 5)
    (out / "judgements.json").write_text(json.dumps(book))
    assert pick.main(argv + ["--write"]) == 1
    assert "decoding" not in read_config(b)


def test_pick_temperature_chooses_the_best_pooled_scroll_above_the_psnr_floor():
    pick = load_script("pick_temperature")

    def j(agree, real, psnr, copy, steps=None):
        return {"agree": agree, "real_scrolls": real, "psnr": psnr, "copy_psnr": copy,
                "psnr_steps": steps or [psnr] * 5, "copy_psnr_steps": [copy] * 5}

    judged = {
        0.6: [j(50, 100, 22, 18), j(60, 100, 22, 18)],  # 55% pooled
        0.8: [j(90, 100, 21, 18), j(40, 100, 21, 18)],  # 65% pooled: one lucky draw does not decide
        1.0: [j(80, 100, 19, 18), j(80, 100, 17, 18)],  # 80%, but below copy-last on the second draw
        1.2: [j(70, 100, 20, 18, steps=[20, 20, 17, 20, 20]), j(70, 100, 20, 18)],  # below at step 3
    }
    best, rows = pick.choose(judged)
    assert best == 0.8
    assert [r["floor"] for r in rows] == [True, True, False, False]
    assert rows[1]["scroll"] == pytest.approx(0.65) and rows[1]["real_scrolls"] == 200
    assert pick.choose({1.0: judged[1.0]})[0] is None
    tie = {0.7: [j(6, 10, 20, 18)], 0.9: [j(6, 10, 21, 18)]}
    assert pick.choose(tie)[0] == 0.9  # equal scroll: the higher PSNR


def test_pick_temperature_judges_on_pooled_sampling_draws(tiny_bundle, unseen_store, tmp_path):
    pick = load_script("pick_temperature")
    out = tmp_path / "judged"
    argv = [str(tiny_bundle), "--data", str(unseen_store), "--temperatures", "1", "--episodes", "2", "--seeds", "0",
            "--out", str(out), "--threads", "1", "--no-progress"]
    pick.main(argv + ["--draws", "2"])
    book = json.loads((out / "judgements.json").read_text())
    (key,) = book
    assert key.endswith("-d2")  # its own judgement: a single draw's is not reused
    report = json.loads((out / key / "report.json").read_text())
    assert report["settings"]["draws"] == 2
    pooled = report["quality"][book[key]["decoder"]]["rollout"]["all"]["overall"]
    assert book[key]["real_scrolls"] == (pooled["real_scroll_steps"] or 0)
    assert pick.main(argv + ["--draws", "0"]) == 2


def test_a_frame_pair_across_dusk_or_dawn_counts_as_night_for_code_flicker():
    """A pair is a day pair only when both frames are day: judged by the later frame alone, the
    pair from the last night frame to the first day one charged night noise to the day figure."""
    from worldsim.evaluation.run import flicker_pairs

    night = np.array([[True, False, False, True], [False, False, False, False]])
    pairs = flicker_pairs(night)
    assert pairs["all"] is None
    assert pairs["night"].tolist() == [True, False, True, False, False, False]
    assert pairs["day"].tolist() == [False, True, False, True, True, True]


def test_a_bundles_relative_shards_path_is_found_from_another_working_folder(
        tiny_bundle, crafter_store, tmp_path, monkeypatch):
    """A bundle records its shards as `worldsim train` was given them, relative to that run's
    working folder. Read from another folder, the path was read against it, the shards were
    not found, and the eval fell back to the whole store: training episodes judged as unseen.
    The path is now also looked for above the bundle."""
    from worldsim.bundle import read_config, recorded_path
    from worldsim.data.store import EpisodeStore, split_ids
    from worldsim.evaluation.episodes import held_out_ids

    root = tmp_path / "checkout"  # a checkout: its shards and its bundle, paths relative to it
    shutil.copytree(read_config(tiny_bundle)["training"]["shards"], root / "data" / "shards")
    shutil.copytree(tiny_bundle, root / "assets" / "models" / "m")
    cfg = read_config(root / "assets" / "models" / "m")
    cfg["training"]["shards"] = "data/shards"
    want = split_ids(EpisodeStore(crafter_store).episode_ids(), 0.05)[1]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert recorded_path(root / "assets" / "models" / "m", "data/shards") == root / "data" / "shards"
    assert recorded_path(root / "assets" / "models" / "m", "data/none") == Path("data/none")
    ids, note = held_out_ids(EpisodeStore(crafter_store), cfg, root / "assets" / "models" / "m")
    assert note.startswith("validation split") and ids == want
    with pytest.warns(UserWarning, match="cannot read"):  # without the bundle's place: not found
        assert held_out_ids(EpisodeStore(crafter_store), cfg)[1].startswith("whole store")


def test_a_plots_legend_makes_room_for_long_decoder_names(tmp_path):
    """Names were cut at 18 characters: block_diffusion:8:t0.9 and block_diffusion:8:peak
    were labelled alike. The legend now widens the figure to fit the longest name."""
    from PIL import Image

    from worldsim.evaluation.media import line_plot

    line_plot(tmp_path / "short.png", "t", "y", {"ar": [1, 2], "copy-last": [2, 1]})
    long = {"block_diffusion:8:t0.9:peak": [1, 2], "block_diffusion:8:t0.9": [2, 1]}
    line_plot(tmp_path / "long.png", "t", "y", long)
    assert Image.open(tmp_path / "short.png").size == (640, 400)
    assert Image.open(tmp_path / "long.png").size[0] > 640


def test_a_one_step_horizon_reports_no_drift_and_says_its_timing_includes_warm_up():
    """Drift (last quarter minus first) read 0.000 with one step, where both quarters are the
    same step; a two-step horizon timed its warm-up step beside the other."""
    from worldsim.evaluation.run import summarise

    def stats(shape):  # per-frame squared error falling along the horizon
        se = np.linspace(100.0, 10.0, int(np.prod(shape))).reshape(shape)
        return {"se": se, "ssim": np.full(shape, 0.5), "tile_hit": np.ones(shape), "tile_changed": np.ones(shape)}

    one = summarise(stats((2, 1)), np.zeros((2, 1), bool))
    assert one["all"]["drift"]["psnr"] is None and one["all"]["overall"]["frames"] == 2
    two = summarise(stats((1, 2)), np.zeros((1, 2), bool))
    assert two["all"]["drift"]["psnr"] == pytest.approx(10.0)  # 10 dB: a tenth of the error


def test_eval_says_greedy_draws_repeat_one_dream(tiny_bundle, unseen_store, tmp_path, capsys):
    """--draws N at temperature 0 did N times the work for N copies of one dream, without a word."""
    assert _eval(tiny_bundle, unseen_store, tmp_path / "g", "--no-teacher-forced", "--videos", "0",
                 "--no-game", "--draws", "2") == 0
    assert "at temperature 0 (greedy) draws the model's dream the same each time" in capsys.readouterr().err
