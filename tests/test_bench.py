import json

import pytest

from worldsim.cli import main


def test_bench_tiny_preset_reports_every_decoder(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--preset", "tiny", "--frames", "3", "--sessions", "1,2", "--ar-sessions", "1",
                 "--session-frames", "1", "--threads", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    r = json.loads(out.read_text())
    rows = {row["decoder"]: row for row in r["rows"]}
    assert set(rows) == {"ar", "diagonal", "block_diffusion"}
    assert rows["ar"]["passes_per_frame"] == 16  # N on the tiny 4x4 grid
    assert rows["diagonal"]["passes_per_frame"] == (4 - 1) * 2 + 4
    assert rows["block_diffusion"]["passes_per_frame"] == 4
    assert rows["ar"]["vs_ar"] == 1.0
    assert set(rows["diagonal"]["sessions_fps"]) == {"1", "2"} and set(rows["ar"]["sessions_fps"]) == {"1"}
    for row in r["rows"]:
        assert row["ms_median"] > 0 and row["ms_p95"] >= row["ms_median"] and row["frames"] == 3
    assert "passes/frame" in text and "fastest:" in text


def test_bench_with_bundle_and_data_reports_psnr(crafter_store, tiny_tokens, tmp_path, capsys):
    from worldsim.train import TrainSettings, train

    tok, shards = tiny_tokens
    train(shards, tok, tmp_path / "wm", objective="block_diffusion", preset="tiny",
          settings=TrainSettings(steps=2, batch=2, val_every=1000, val_batches=1, warmup=1), progress=False)
    out = tmp_path / "b.json"
    assert main(["bench", "--bundle", str(tmp_path / "wm"), "--data", str(crafter_store), "--frames", "10",
                 "--sessions", "1,2", "--session-frames", "1", "--threads", "1", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    rows = {row["decoder"]: row for row in r["rows"]}
    assert set(rows) == {"ar", "block_diffusion"} and rows["ar"]["speed_only"]
    # ar times the ratios' baseline only: one session (not --sessions), at most 8 frames
    assert rows["ar"]["frames"] == 8 and set(rows["ar"]["sessions_fps"]) == {"1"}
    assert rows["block_diffusion"]["frames"] == 10 and set(rows["block_diffusion"]["sessions_fps"]) == {"1", "2"}
    bd = rows["block_diffusion"]
    assert not bd["speed_only"] and bd["image_decode"] and bd["decode_ms"] > 0
    assert 0 < bd["psnr"] < 100 and 0 < bd["copy_last_psnr"]
    assert r["dtype"] == "float32"
    # Without --dtype a bundle runs in the dtype its weights are stored in, as `play` runs it;
    # --dtype overrides that.
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "wm" / "model.safetensors"
    save_file({k: v.bfloat16() for k, v in load_file(str(weights)).items()}, str(weights))
    for extra, want in (([], "bfloat16"), (["--dtype", "fp32"], "float32")):
        assert main(["bench", "--bundle", str(tmp_path / "wm"), "--decoders", "block_diffusion", "--frames", "2",
                     "--sessions", "1", "--threads", "1", "--json", str(out), *extra]) == 0
        assert json.loads(out.read_text())["dtype"] == want
        assert f"cpu, {want}, 1 threads" in capsys.readouterr().out
    # a store of another frame size is refused in one line, as eval refuses it
    from worldsim.data.collect import collect_crafter

    collect_crafter(tmp_path / "small", episodes=1, steps=5, seed=0, size=18, workers=1, progress=False)
    capsys.readouterr()
    assert main(["bench", "--bundle", str(tmp_path / "wm"), "--data", str(tmp_path / "small"), "--frames", "2",
                 "--sessions", "1", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "takes 72x72 frames but" in err and "holds 18x18" in err


def test_bench_graphs_flag_reaches_the_block_diffusion_row(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--preset", "tiny", "--decoders", "block_diffusion", "--graphs", "--frames", "2",
                 "--sessions", "1", "--threads", "1", "--json", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["settings"]["graphs"] and row["passes_per_frame"] == 4
    assert "block_diffusion K=4 graphs" in capsys.readouterr().out
    # Without the flag (graph replay's default is on with CUDA only) and with --no-graphs: eager here.
    for flag in ([], ["--no-graphs"]):
        assert main(["bench", "--preset", "tiny", "--decoders", "block_diffusion", "--frames", "2",
                     "--sessions", "1", "--threads", "1", "--json", str(out), *flag]) == 0
        assert json.loads(out.read_text())["rows"][0]["settings"]["graphs"] is False


@pytest.mark.parametrize("extra,label", [([], "block_diffusion K=4 "),
                                         (["--guidance", "1.5"], "block_diffusion K=4 g=1.5 ")])
def test_bench_guidance_reaches_the_row_and_its_label_only_when_on(tmp_path, capsys, extra, label):
    out = tmp_path / "bench.json"
    assert main(["bench", "--preset", "tiny", "--decoders", "block_diffusion", "--frames", "2",
                 "--sessions", "1", "--threads", "1", "--json", str(out), *extra]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["settings"]["guidance"] == (1.5 if extra else 0.0)
    table = capsys.readouterr().out
    assert label in table and ("g=" in table) == bool(extra)


@pytest.mark.parametrize("extra,says", [(["--data", "."], "--data judges"),
                                        (["--sessions", "0,4"], "1 or more"),
                                        (["--sessions", "1", "--ar-sessions", "-4"], "1 or more")])
def test_bench_refuses_options_it_would_ignore_or_misread(extra, says, capsys):
    from worldsim.cli import main

    assert main(["bench", "--preset", "tiny", "--frames", "2", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err
