"""Imports run downhill: serving a bundle never imports training code (DESIGN.md, Layout)."""

import json
import subprocess
import sys

# A fresh interpreter, so that modules other tests imported do not count. tqdm is made
# unimportable first: torch.hub imports it whenever it is installed (and falls back to a stand-in
# when it is not), so its presence alone would say nothing about worldsim's own imports.
PROBE = """
import json, sys
sys.modules["tqdm"] = None  # `import tqdm` now raises ImportError
import worldsim.inference.engine, worldsim.bundle
print(json.dumps(sorted(sys.modules)))
"""

TRAINING = {"worldsim.train", "worldsim.train_tokenizer", "worldsim.objectives", "worldsim.checkpoint",
            "worldsim.evaluation", "worldsim.idm", "worldsim.data.shards", "worldsim.commands"}
LAUNCHER = ("torch.distributed.run", "torch.distributed.launch", "torch.distributed.launcher",
            "torch.distributed.elastic")


def test_serving_imports_no_training_code():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    modules = set(json.loads(out.stdout))
    assert "worldsim.inference.engine" in modules and "worldsim.model" in modules
    training = sorted(m for m in modules if m in TRAINING or m.startswith(tuple(t + "." for t in TRAINING)))
    assert not training, f"training modules imported: {training}"
    launcher = sorted(m for m in modules if m.startswith(LAUNCHER))
    assert not launcher, f"launcher code imported: {launcher}"
