"""Imports run downhill: serving a bundle never imports training code (DESIGN.md, Layout)."""

import json
import subprocess
import sys

import torch

from worldsim import bundle
from worldsim.envs.crafter import CRAFTER_SPACE
from worldsim.model import WorldModel, preset_config
from worldsim.tokenizers.action import make_action_tokenizer
from worldsim.tokenizers.image import PRESETS, ImageTokenizer

# A fresh interpreter, so that modules other tests imported do not count. tqdm is made
# unimportable first: torch.hub imports it whenever it is installed (and falls back to a stand-in
# when it is not), so its presence alone would say nothing about worldsim's own imports.
PROBE = """
import json, sys
sys.modules["tqdm"] = None  # `import tqdm` now raises ImportError
from worldsim.inference.engine import Engine
if len(sys.argv) > 1:
    Engine.from_bundle(sys.argv[1])
print(json.dumps(sorted(sys.modules)))
"""

TRAINING = ("worldsim.train", "worldsim.train_tokenizer", "worldsim.objectives", "worldsim.checkpoint",
            "worldsim.evaluate", "worldsim.evaluation", "worldsim.data.shards", "worldsim.idm",
            "worldsim.commands")
LAUNCHER = ("torch.distributed.run", "torch.distributed.launch", "torch.distributed.launcher",
            "torch.distributed.elastic")


def imported_by(*args: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def check_serving_only(modules: set[str]) -> None:
    assert "worldsim.inference.engine" in modules and "worldsim.model" in modules
    training = sorted(m for m in modules if m in TRAINING or m.startswith(tuple(t + "." for t in TRAINING)))
    assert not training, f"training modules imported: {training}"
    launcher = sorted(m for m in modules if m.startswith(LAUNCHER))
    assert not launcher, f"launcher code imported: {launcher}"


def test_importing_the_engine_imports_no_training_code():
    check_serving_only(imported_by())


def test_loading_a_bundle_imports_no_training_code(tmp_path):
    torch.manual_seed(0)
    model = WorldModel(preset_config("tiny", objective="block_diffusion"))
    tok = ImageTokenizer(PRESETS["tiny"])
    act = make_action_tokenizer(CRAFTER_SPACE, offset=model.cfg.codebook_size)
    bundle.update_config(tmp_path, model=model.cfg.to_dict(), image_tokenizer=tok.cfg.to_dict(),
                         action_tokenizer=act.to_config())
    bundle.save_weights(tmp_path, "model", model)
    bundle.save_weights(tmp_path, "image_tokenizer", tok)
    modules = imported_by(str(tmp_path))
    assert "worldsim.bundle" in modules and "worldsim.tokenizers.image" in modules
    check_serving_only(modules)
    # The model is built on the meta device and its weights assigned: initialising it there would
    # import torch's compiler stack (some 800 modules, a second of a server's start) for nothing.
    assert "torch._dynamo" not in modules
