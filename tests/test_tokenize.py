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
    assert s["episodes"] == 5 and s["tokenized"] == 6
    index = json.loads((tmp_path / "sh" / "index.json").read_text())
    assert "000001" not in [e["id"] for e in index["episodes"]]
    assert main(["tokenize", "--data", str(crafter_store), "--tokenizer", str(tiny_tokens[0]),
                 "--out", str(tmp_path / "sh"), "--no-progress"]) == 0
    assert "tokenized 0 episodes" not in capsys.readouterr().out  # 000001 was redone from good data
    s = tokenize_store(crafter_store, tiny_tokens[0], tmp_path / "sh", progress=False)
    assert s["tokenized"] == 0 and s["episodes"] == 6
