"""Bundles load what was saved, and a broken bundle gives one line that names what is wrong."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from worldsim import bundle
from worldsim.bundle import BundleError
from worldsim.cli import main
from worldsim.envs.crafter import CRAFTER_SPACE
from worldsim.model import WorldModel, preset_config
from worldsim.tokenizers.action import make_action_tokenizer
from worldsim.tokenizers.image import PRESETS, ImageTokenizer
from worldsim.inference.engine import DecoderSettings, Engine
from worldsim.inference.sampling import GREEDY


@pytest.fixture
def tiny_bundle(tmp_path):
    """A block-diffusion tiny model with the tiny VQ tokenizer (4x4 tokens of 64 codes)."""
    torch.manual_seed(0)
    model = WorldModel(preset_config("tiny", objective="block_diffusion")).eval()
    tok = ImageTokenizer(PRESETS["tiny"]).eval()
    act = make_action_tokenizer(CRAFTER_SPACE, offset=model.cfg.codebook_size)
    folder = tmp_path / "wm"
    bundle.update_config(folder, model=model.cfg.to_dict(), image_tokenizer=tok.cfg.to_dict(),
                         action_tokenizer=act.to_config(), action_space=CRAFTER_SPACE.to_dict(),
                         env="crafter")
    bundle.save_weights(folder, "model", model)
    bundle.save_weights(folder, "image_tokenizer", tok)
    return folder, model, tok


def edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        cfg[key] = value
    (folder / "config.json").write_text(json.dumps(cfg))


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_components_load_as_saved(tiny_bundle):
    folder, model, tok = tiny_bundle
    loaded = bundle.load_world_model(folder)
    assert loaded.cfg == model.cfg and not loaded.training
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    loaded_tok = bundle.load_image_tokenizer(folder)
    for a, b in zip(tok.state_dict().values(), loaded_tok.state_dict().values()):
        assert torch.equal(a, b)
    frames = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    assert torch.equal(loaded_tok.encode(frames), tok.encode(frames))


def test_engine_from_bundle_dreams_frames_of_the_tokenizers_size(tiny_bundle):
    folder, model, _ = tiny_bundle
    eng = Engine.from_bundle(folder, decoder=DecoderSettings(steps=2, sampling=GREEDY))
    assert eng.decoder.name == "block_diffusion"  # auto, for a block-diffusion model
    frames = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    session = eng.open(frames, [3])
    image, stats = session.step(1)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and stats.passes == 2


def test_missing_config(tmp_path):
    with pytest.raises(BundleError) as e:
        bundle.load_world_model(tmp_path)
    assert "not a worldsim bundle (no config.json)" in one_line(e)


@pytest.mark.parametrize("text", ["[1, 2]", "3", '"config"'])
def test_a_config_that_is_json_but_not_an_object_is_refused_in_one_line(tmp_path, text):
    """It was read as a dict: an AttributeError traceback in every command."""
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(BundleError, match="is not a worldsim bundle config"):
        bundle.read_config(tmp_path)


def test_missing_weights_file(tiny_bundle):
    folder, _, _ = tiny_bundle
    (folder / "model.safetensors").unlink()
    with pytest.raises(BundleError) as e:
        bundle.load_world_model(folder)
    assert "model.safetensors missing" in one_line(e)


def test_torn_weights_file(tiny_bundle):
    folder, _, _ = tiny_bundle
    (folder / "image_tokenizer.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(BundleError) as e:
        bundle.load_image_tokenizer(folder)
    assert one_line(e).startswith(f"cannot read {folder / 'image_tokenizer.safetensors'}")


def test_weights_of_another_shape(tiny_bundle):
    folder, model, _ = tiny_bundle
    other = WorldModel(preset_config("tiny", objective="block_diffusion", dim=32, n_heads=2, n_kv_heads=1))
    bundle.save_weights(folder, "model", other)
    with pytest.raises(BundleError) as e:
        bundle.load_world_model(folder)
    msg = one_line(e)
    assert "model.safetensors does not match the config: size mismatch for " in msg
    assert "more)" in msg  # every layer mismatches; the first is named, the rest counted


def test_weights_missing_a_tensor(tiny_bundle):
    folder, model, _ = tiny_bundle
    sd = {k: v for k, v in model.state_dict().items() if k != "norm.weight"}
    save_file(sd, str(folder / "model.safetensors"))
    with pytest.raises(BundleError) as e:
        bundle.load_world_model(folder)
    assert "missing ['norm.weight']" in one_line(e)


@pytest.mark.parametrize("component,load", [("model", bundle.load_world_model),
                                            ("image_tokenizer", bundle.load_image_tokenizer),
                                            ("action_tokenizer", bundle.load_action_tokenizer)])
def test_unknown_config_key(tiny_bundle, component, load):
    folder, _, _ = tiny_bundle
    cfg = json.loads((folder / "config.json").read_text())
    edit_config(folder, **{component: {**cfg[component], "flash_attention": True}})
    with pytest.raises(BundleError) as e:
        load(folder)
    msg = one_line(e)
    assert f"bad {component} config" in msg and "flash_attention" in msg


def test_config_value_out_of_range(tiny_bundle):
    folder, model, _ = tiny_bundle
    edit_config(folder, model={**model.cfg.to_dict(), "grid": [3, 3]})  # 9 slots for 16 tokens
    with pytest.raises(BundleError) as e:
        bundle.load_world_model(folder)
    assert "grid" in one_line(e)


def test_unknown_image_tokenizer_kind(tiny_bundle):
    folder, _, tok = tiny_bundle
    edit_config(folder, image_tokenizer={**tok.cfg.to_dict(), "kind": "gan"})
    with pytest.raises(BundleError) as e:
        bundle.load_image_tokenizer(folder)
    assert "unknown kind 'gan'" in one_line(e)


def test_missing_component(tiny_bundle):
    folder, _, _ = tiny_bundle
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["action_tokenizer"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BundleError) as e:
        Engine.from_bundle(folder)
    assert "has no action tokenizer" in one_line(e)


def test_cli_prints_one_line_for_a_broken_bundle(tiny_bundle, capsys):
    folder, _, _ = tiny_bundle
    other = WorldModel(preset_config("tiny", objective="block_diffusion", dim=32, n_heads=2, n_kv_heads=1))
    bundle.save_weights(folder, "model", other)
    assert main(["bench", "--bundle", str(folder), "--frames", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("worldsim bench: error: ") and "size mismatch" in err and "\n" not in err


def test_play_temperature_is_the_given_then_the_bundles_then_the_default(tiny_bundle):
    folder, _, _ = tiny_bundle
    assert bundle.recorded_temperature(folder) is None
    assert bundle.play_temperature(folder, None) == bundle.PLAY_TEMPERATURE
    assert bundle.play_temperature(folder, None, default=0.0) == 0.0
    bundle.update_config(folder, decoding={"temperature": 1.1})
    assert bundle.play_temperature(folder, None) == 1.1
    assert bundle.play_temperature(folder, 0.0) == 0.0  # greedy asked for is greedy
    for bad in (-1, "hot", True, 11):
        edit_config(folder, decoding={"temperature": bad})
        with pytest.raises(BundleError) as e:
            bundle.play_temperature(folder, None)
        assert "decoding temperature" in one_line(e)


def test_the_server_plays_at_the_bundles_recorded_temperature(tiny_bundle):
    import argparse

    from worldsim.commands.serve import add_engine_args, build_server
    from worldsim.inference.server import ServerSettings

    folder, _, _ = tiny_bundle
    p = argparse.ArgumentParser()
    add_engine_args(p)
    bundle.update_config(folder, decoding={"temperature": 1.25})
    for argv, want in (([], 1.25), (["--temperature", "0.3"], 0.3)):
        _, _, server = build_server(p.parse_args(["--bundle", str(folder), "--device", "cpu", *argv]),
                                    ServerSettings(host="127.0.0.1", port=0, max_sessions=1))
        try:
            assert server.scheduler.decoder.sampling.temperature == want
        finally:
            server.scheduler.stop()


def test_info_describes_a_bundle_and_the_temperature_it_plays_at(tiny_bundle, capsys):
    folder, model, _ = tiny_bundle
    assert main(["info", "--bundle", str(folder)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("bundle "))
    assert f"{folder}: block_diffusion on crafter" in row and f"{model.cfg.frames}-frame window" in row
    assert "records no temperature (plays at 0.8)" in row
    assert "world memory" not in row  # its tokens are a VQ tokenizer's, not Crafter's tiles
    bundle.update_config(folder, decoding={"temperature": 1.1},
                         model_metrics={"params": 2_500_000, "steps": 1234, "val_loss": 0.0441})
    assert main(["info", "--bundle", str(folder)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("bundle "))
    assert "2.5M parameters" in row and "1,234 steps, val loss 0.044" in row and "plays at temperature 1.1" in row
    # a run from a parent (train --init), shipped between the two (ship_model.py --interpolate)
    bundle.update_config(folder, init={"bundle": "parent"}, model_metrics={
        "steps": 753, "val_loss": None, "interpolated": {"parent": "parent", "alpha": 0.5}})
    assert main(["info", "--bundle", str(folder)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("bundle "))
    assert "753 steps from a parent bundle, weights 0.5 of the way from the parent's to the run's" in row
    assert "val loss" not in row
    assert main(["info", "--bundle", str(folder / "nope")]) == 2
    assert "is not a worldsim bundle" in capsys.readouterr().err
    # weights gone, and a bundle with no world model: said, with no temperature it cannot play at
    (folder / "model.safetensors").unlink()
    assert main(["info", "--bundle", str(folder)]) == 0
    assert "its weights (model.safetensors) missing" in capsys.readouterr().out
    cfg = bundle.read_config(folder)
    del cfg["model"]
    (folder / "config.json").write_text(json.dumps(cfg))
    assert main(["info", "--bundle", str(folder)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("bundle "))
    assert "no world model; an image tokenizer for crafter" in row and "temperature" not in row
