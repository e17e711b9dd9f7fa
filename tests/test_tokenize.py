import json

import numpy as np
import pytest

from worldsim.cli import main
from worldsim.data.store import CorruptEpisodeWarning, EpisodeStore
from worldsim.data.shards import TokenShards, tokenize_store
from worldsim.bundle import load_image_tokenizer


def test_shards_match_the_tokenizers(crafter_store, tiny_tokens):
    tok_dir, shards_dir = tiny_tokens
    shards = TokenShards(shards_dir)
    store = EpisodeStore(crafter_store)
    assert shards.frames.dtype == np.uint16 and shards.actions.dtype == np.uint16
    assert shards.N == 81 and shards.A == 1 and shards.K == 64
    assert shards.episode_ids == store.episode_ids()
    image_tok = load_image_tokenizer(tok_dir)
    ep = store.load("000002")
    frames_TN, actions_TA = shards.episode("000002")
    assert frames_TN.shape == (len(ep.frames), 81) and actions_TA.shape == (ep.num_steps, 1)
    np.testing.assert_array_equal(frames_TN, image_tok.encode(ep.frames).numpy())
    # Action ids follow the K image codes.
    np.testing.assert_array_equal(actions_TA[:, 0], ep.actions.astype(np.int64) + 64)


def test_windows_stay_inside_episodes(tiny_tokens):
    shards = TokenShards(tiny_tokens[1])
    f, a = shards.window_starts(5)
    fr, ac = shards.gather(f, a, 5)
    assert fr.shape == (len(f), 5, 81) and ac.shape == (len(f), 5, 1)
    for e in shards.episodes:  # every window lies in one episode, with all its actions
        inside = (f >= e["frame_offset"]) & (f < e["frame_offset"] + e["frames"])
        assert (f[inside] + 5 <= e["frame_offset"] + e["frames"] - 1).all()
        assert (a[inside] - e["action_offset"] == f[inside] - e["frame_offset"]).all()


def test_tokenize_resumes_and_skips_corrupt(crafter_store, tiny_tokens, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(crafter_store, data)
    bad = EpisodeStore(data).episode_path("000001")
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.warns(CorruptEpisodeWarning, match="000001"):
        s = tokenize_store(data, tiny_tokens[0], tmp_path / "sh", progress=False)
    assert s["episodes"] == 5 and s["tokenized"] == 5 and s["corrupt"] == 1
    index = json.loads((tmp_path / "sh" / "index.json").read_text())
    assert "000001" not in [e["id"] for e in index["episodes"]]
    assert main(["tokenize", "--data", str(crafter_store), "--tokenizer", str(tiny_tokens[0]),
                 "--out", str(tmp_path / "sh"), "--no-progress"]) == 0
    out = capsys.readouterr().out  # 000001 was redone from good data
    assert out.startswith("tokenized 1 episodes (5 already there), ")
    s = tokenize_store(crafter_store, tiny_tokens[0], tmp_path / "sh", progress=False)
    assert s["tokenized"] == 0 and s["episodes"] == 6


def test_a_part_is_reused_only_for_the_episode_it_was_made_from(crafter_store, tiny_tokens, tmp_path):
    """Resuming into shards made from other data redoes the parts whose episode differs (the
    same id in another store, or written again since), and a damaged part or a killed run's
    temporary is redone or removed, not a crash."""
    import shutil

    other = tmp_path / "other"
    shutil.copytree(crafter_store, other)
    ep = EpisodeStore(other).load("000002")
    EpisodeStore(other).write_episode("000002", ep.frames[::-1].copy(), ep.actions, daylight=ep.daylight)
    sh = tmp_path / "sh"
    assert tokenize_store(crafter_store, tiny_tokens[0], sh, progress=False)["tokenized"] == 6
    s = tokenize_store(other, tiny_tokens[0], sh, progress=False)
    assert s["tokenized"] == 1 and s["episodes"] == 6  # only the episode that differs
    np.testing.assert_array_equal(TokenShards(sh).episode("000002")[0],
                                  TokenShards(tiny_tokens[1]).episode("000002")[0][::-1])
    (sh / "parts" / "000004.npz").write_bytes((sh / "parts" / "000004.npz").read_bytes()[:200])
    stale = sh / "parts" / ".000005.npz.abc.tmp"
    stale.write_bytes(b"half a part")
    s = tokenize_store(other, tiny_tokens[0], sh, progress=False)
    assert s["tokenized"] == 1 and s["episodes"] == 6 and not stale.exists()
    np.testing.assert_array_equal(TokenShards(sh).episode("000004")[0], TokenShards(tiny_tokens[1]).episode("000004")[0])


def test_summary_after_a_corrupt_episode_counts_it_apart(crafter_store, tiny_tokens, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(crafter_store, data)
    bad = EpisodeStore(data).episode_path("000003")
    bad.write_bytes(bad.read_bytes()[:100])
    args = ["tokenize", "--data", str(data), "--tokenizer", str(tiny_tokens[0]), "--out",
            str(tmp_path / "sh"), "--no-progress"]
    for done in (0, 5):  # the second run finds the 5 good ones done and the corrupt one again
        assert main(args) == 0
        out, err = capsys.readouterr()
        assert out.startswith(f"tokenized {5 - done} episodes ({done} already there, 1 corrupt skipped), ")
        # (Python shows a repeated warning once per process: check the first run's.)
        assert done or (err.startswith("worldsim: warning: skipping corrupt episode") and "000003" in err)


def test_shards_record_their_tokenizers_weights(crafter_store, tiny_tokens, tmp_path):
    """Tokenizing into existing shards with another tokenizer of the same shape is refused:
    the shards would mix codes of two tokenizers."""
    import shutil

    from safetensors.torch import load_file, save_file

    from worldsim.errors import WorldsimError
    from worldsim.fileio import file_sha256

    tok = tiny_tokens[0]
    index = json.loads((tiny_tokens[1] / "index.json").read_text())
    assert index["tokenizer_sha256"] == file_sha256(tok / "image_tokenizer.safetensors")
    other = tmp_path / "other"
    shutil.copytree(tok, other)
    sd = load_file(str(other / "image_tokenizer.safetensors"))
    name = next(k for k, v in sd.items() if v.is_floating_point())
    sd[name] = sd[name] * 2
    save_file(sd, str(other / "image_tokenizer.safetensors"))
    shards = tmp_path / "sh"
    shutil.copytree(tiny_tokens[1], shards)
    with pytest.raises(WorldsimError, match="holds shards from another tokenizer"):
        tokenize_store(crafter_store, other, shards, progress=False)


def _recollected(store, seed: int) -> None:
    """Record `store` (a copy of another) as collected with `seed`: a store of other worlds."""
    info = json.loads((store / "dataset.json").read_text())
    (store / "dataset.json").write_text(json.dumps({**info, "source": {**info["source"], "seed": seed}}))


def test_several_stores_go_into_one_set_of_shards(crafter_store, tiny_tokens, tmp_path):
    """The first store keeps its ids; a further one's episodes are `<folder>/<id>`, with the
    same codes as that store tokenized alone."""
    import shutil

    second = tmp_path / "second"
    shutil.copytree(crafter_store, second)
    _recollected(second, seed=4)
    ep = EpisodeStore(second).load("000001")  # make it another episode than the first store's
    EpisodeStore(second).write_episode("000001", ep.frames[::-1].copy(), ep.actions, daylight=ep.daylight)
    assert main(["tokenize", "--data", str(crafter_store), "--data", str(second), "--tokenizer",
                 str(tiny_tokens[0]), "--out", str(tmp_path / "both"), "--no-progress"]) == 0
    both, alone = TokenShards(tmp_path / "both"), TokenShards(tiny_tokens[1])
    ids = EpisodeStore(crafter_store).episode_ids()
    assert both.episode_ids == ids + [f"second/{i}" for i in ids]
    assert both.index["data"] == str(crafter_store)
    assert both.index["more_data"] == [{"data": str(second), "prefix": "second/"}]
    for i in ids:
        np.testing.assert_array_equal(both.episode(i)[0], alone.episode(i)[0])
    np.testing.assert_array_equal(both.episode("second/000002")[0], alone.episode("000002")[0])
    assert not np.array_equal(both.episode("second/000001")[0], alone.episode("000001")[0])
    np.testing.assert_array_equal(both.episode("second/000001")[0], alone.episode("000001")[0][::-1])
    f, a = both.window_starts(5)  # windows come from both stores
    assert len(f) == 2 * len(alone.window_starts(5)[0])


def test_stores_of_another_game_or_with_one_name_are_not_tokenized_together(crafter_store, tiny_tokens, tmp_path):
    import shutil

    from worldsim.errors import WorldsimError

    other = tmp_path / "fast"
    shutil.copytree(crafter_store, other)
    info = json.loads((other / "dataset.json").read_text())
    (other / "dataset.json").write_text(json.dumps({**info, "fps": info["fps"] * 2}))
    with pytest.raises(WorldsimError, match="not of the same game"):
        tokenize_store([crafter_store, other], tiny_tokens[0], tmp_path / "sh", progress=False)
    twin = tmp_path / "x" / "store"
    shutil.copytree(crafter_store, twin)
    twin2 = tmp_path / "y" / "store"
    shutil.copytree(crafter_store, twin2)
    with pytest.raises(WorldsimError, match="distinct folder names"):
        tokenize_store([crafter_store, twin, twin2], tiny_tokens[0], tmp_path / "sh", progress=False)
    # a store collected with the first one's seed plays its worlds again, episode for episode:
    # the first store's held-out worlds would be trained on through their twins
    with pytest.raises(WorldsimError, match="both collected with --seed 3"):
        tokenize_store([crafter_store, twin], tiny_tokens[0], tmp_path / "sh", progress=False)
    other = tmp_path / "z" / "other"
    shutil.copytree(crafter_store, other)
    _recollected(twin, seed=5)
    _recollected(other, seed=5)
    with pytest.raises(WorldsimError, match="both collected with --seed 5"):
        tokenize_store([crafter_store, twin, other], tiny_tokens[0], tmp_path / "sh", progress=False)
    # one store named twice is said to be (it read as two stores collected with one seed)
    with pytest.raises(WorldsimError, match="is given twice"):
        tokenize_store([crafter_store, crafter_store], tiny_tokens[0], tmp_path / "sh", progress=False)
    assert not (tmp_path / "sh" / "index.json").exists()


def test_a_pack_killed_between_its_arrays_leaves_no_shards_and_the_next_tokenize_packs_again(
        crafter_store, tiny_tokens, tmp_path, monkeypatch):
    """The index goes first and comes back last: a kill after the new frames.npy but before
    actions.npy and index.json leaves a folder that refuses to load (an old index over new
    arrays read windows across episodes), and tokenizing into it again packs it whole."""
    import shutil

    from worldsim.data import shards as shards_mod
    from worldsim.errors import WorldsimError

    data, out = tmp_path / "data", tmp_path / "sh"
    shutil.copytree(crafter_store, data)
    EpisodeStore(data).episode_path("000005").unlink()  # 5 episodes first
    tokenize_store(data, tiny_tokens[0], out, progress=False)
    shutil.copy(EpisodeStore(crafter_store).episode_path("000005"), EpisodeStore(data).episode_path("000005"))

    real_save = np.save

    def killed_at_actions(fh, arr, *a, **k):
        if arr.ndim == 2 and arr.shape[1] == 1:  # the actions array: (steps, A = 1)
            raise KeyboardInterrupt
        return real_save(fh, arr, *a, **k)

    monkeypatch.setattr(shards_mod.np, "save", killed_at_actions)
    with pytest.raises(KeyboardInterrupt):
        tokenize_store(data, tiny_tokens[0], out, progress=False)
    monkeypatch.setattr(shards_mod.np, "save", real_save)
    with pytest.raises(WorldsimError, match="no index.json"):
        TokenShards(out)
    s = tokenize_store(data, tiny_tokens[0], out, progress=False)
    assert s["tokenized"] == 0 and s["episodes"] == 6  # packed from the parts, none encoded again
    whole, fresh = TokenShards(out), TokenShards(tiny_tokens[1])
    for eid in fresh.episode_ids:
        for a, b in zip(whole.episode(eid), fresh.episode(eid)):
            np.testing.assert_array_equal(a, b)


def test_arrays_that_do_not_match_their_index_are_refused_in_one_line(tiny_tokens, tmp_path):
    import shutil

    from worldsim.errors import WorldsimError

    out = tmp_path / "sh"
    shutil.copytree(tiny_tokens[1], out)
    frames = np.load(out / "frames.npy")
    np.save(out / "frames.npy", frames[:-3])
    with pytest.raises(WorldsimError, match="do not hold what index.json says"):
        TokenShards(out)


def test_action_ids_past_uint16_are_refused_not_wrapped(tmp_path, capsys):
    from worldsim.envs.crafter import CRAFTER_SPACE

    store = EpisodeStore.create(tmp_path / "s", env="crafter", action_space=CRAFTER_SPACE,
                                frame_size=(32, 32), fps=10)
    rng = np.random.default_rng(0)
    for i in range(3):
        store.write_episode(f"{i:06d}", rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8),
                            rng.integers(0, 17, 5).astype(np.int16), np.linspace(1, 0.2, 6))
    store.refresh()
    # 65,530 image codes leave room for 6 action ids in uint16, and Crafter has 17.
    assert main(["train-tokenizer", "--kind", "tile", "--data", str(store.root), "--out", str(tmp_path / "tok"),
                 "--preset", "tiny", "--codebook", "65530", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["tokenize", "--data", str(store.root), "--tokenizer", str(tmp_path / "tok"),
                 "--out", str(tmp_path / "sh"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "do not fit uint16 shards" in err and "17 action ids" in err
    assert not (tmp_path / "sh" / "actions.npy").exists()


def test_episodes_without_daylight_are_tokenized_as_day_with_a_warning(tmp_path):
    from worldsim.envs.crafter import CRAFTER_SPACE
    from worldsim.fit_tiles import fit_tile_tokenizer

    store = EpisodeStore.create(tmp_path / "s", env="crafter", action_space=CRAFTER_SPACE,
                                frame_size=(32, 32), fps=10)
    rng = np.random.default_rng(0)
    for i in range(3):
        store.write_episode(f"{i:06d}", rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8),
                            rng.integers(0, 17, 5).astype(np.int16), np.linspace(1, 0.6, 6) if i else None)
    store.refresh()
    fit_tile_tokenizer(store.root, tmp_path / "tok", preset="tiny", progress=False)
    with pytest.warns(UserWarning, match="1 episode.s. record no daylight"):
        tokenize_store(store.root, tmp_path / "tok", tmp_path / "sh", progress=False)
