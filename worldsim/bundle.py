"""Bundles: a folder that describes a model completely.

    BUNDLE/config.json                 {"format": "worldsim.bundle", "version": 1,
                                        "image_tokenizer": {...}, "action_tokenizer": {...},
                                        "model": {...}, "env": ..., "metrics": {...},
                                        "decoding": {"temperature": T}}   (optional)
    BUNDLE/<component>.safetensors     weights of each component that has them

Every hyper-parameter lives in config.json, so loading builds each component from its config
and then assigns the weights from a memory-mapped safetensors file. Nothing is unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import torch
from safetensors.torch import load_file, save

from worldsim.errors import WorldsimError
from worldsim.fileio import atomic_open, atomic_write_json

if TYPE_CHECKING:
    from worldsim.model import WorldModel
    from worldsim.tokenizers.action import ActionTokenizer
    from worldsim.tokenizers.image import ImageTokenizer

T = TypeVar("T")

FORMAT = "worldsim.bundle"
VERSION = 1


class BundleError(WorldsimError):
    pass


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise BundleError(f"{folder} is not a worldsim bundle (no config.json)")
    try:  # JSON is UTF-8 whatever the locale says (a BOM, as some editors write, is allowed)
        cfg = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise BundleError(f"{path} is not a worldsim bundle config (format "
                          f"{cfg.get('format') if isinstance(cfg, dict) else None!r})")
    if cfg.get("version") != VERSION:
        raise BundleError(f"{path} has bundle version {cfg.get('version')}; this worldsim reads {VERSION}")
    return cfg


def update_config(folder: str | os.PathLike, **entries: Any) -> dict[str, Any]:
    """Merge top-level entries into the bundle's config.json (made if missing), atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = read_config(folder) if (folder / "config.json").exists() else {"format": FORMAT, "version": VERSION}
    cfg.update(entries)
    atomic_write_json(folder / "config.json", cfg)
    return cfg


def recorded_path(folder: str | os.PathLike, path: str | os.PathLike) -> Path:
    """A path that a bundle's config records (the shards it trained on, the bundle it started
    from), as it was written: relative to the working folder of the run that made the bundle.
    Read from another working folder it is found under the first folder above the bundle that
    holds it (a checkout entered from elsewhere); where none does, it is returned as recorded."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    for above in Path(folder).resolve().parents:
        if (above / p).exists():
            return above / p
    return p


def save_weights(folder: str | os.PathLike, component: str, module: torch.nn.Module) -> Path:
    path = Path(folder) / f"{component}.safetensors"
    tensors = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    with atomic_open(path, "wb") as f:
        f.write(save(tensors))
    return path


def load_weights(folder: str | os.PathLike, component: str, module: torch.nn.Module) -> torch.nn.Module:
    """Assign weights from BUNDLE/<component>.safetensors (memory-mapped) into `module`."""
    path = Path(folder) / f"{component}.safetensors"
    if not path.is_file():
        raise BundleError(f"bundle {folder} has no weights for {component} ({path.name} missing)")
    try:
        sd = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for torn or foreign files
        raise BundleError(f"cannot read {path}: {e}") from e
    _check_dtypes(path, sd, module)
    try:
        missing, unexpected = module.load_state_dict(sd, strict=False, assign=True)
    except RuntimeError as e:  # torch lists every size mismatch, one per line: name the first
        lines = [line.strip() for line in str(e).splitlines() if "size mismatch" in line]
        first = lines[0].removesuffix(".") if lines else str(e).splitlines()[0]
        more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
        raise BundleError(f"{path} does not match the config: {first}{more}") from None
    if missing or unexpected:
        raise BundleError(f"{path} does not match the config: missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}")
    return module


def _check_dtypes(path: Path, sd: dict[str, torch.Tensor], module: torch.nn.Module) -> None:
    """The weights take the file's dtype (the shipped model is bfloat16), so the file must hold
    one floating dtype, and integers only where the module keeps integers: else the model loads
    and its first forward fails (float32 beside float64 in one attention)."""
    want = module.state_dict()
    floating = sorted({str(t.dtype).removeprefix("torch.") for t in sd.values() if t.is_floating_point()})
    if len(floating) > 1:
        raise BundleError(f"{path} mixes weights of {' and '.join(floating)}; a component's weights "
                          "share one floating dtype")
    for name, t in sd.items():
        if name in want and t.is_floating_point() != want[name].is_floating_point():
            raise BundleError(f"{path} does not match the config: {name} is "
                              f"{str(t.dtype).removeprefix('torch.')}, not "
                              f"{str(want[name].dtype).removeprefix('torch.')}")


def build_component(folder: str | os.PathLike, component: str, build: Callable[[], T]) -> T:
    """`build()` (a component from its config), with a config it refuses (an unknown key, a
    value out of range) reported as one line that names the bundle and the component."""
    try:
        return build()
    except (ValueError, TypeError) as e:
        raise BundleError(f"{Path(folder) / 'config.json'}: bad {component} config: {e}") from None


# -- how the bundle plays ----------------------------------------------------------------------
PLAY_TEMPERATURE = 0.8  # for a bundle that records none: the study's best for the first models


def recorded_temperature(folder: str | os.PathLike) -> float | None:
    """The sampling temperature the bundle plays at (config.json's "decoding": {"temperature":
    T}, chosen on held-out windows: a sharper model scrolls best at a hotter sampler), or None
    where it records none."""
    decoding = read_config(folder).get("decoding") or {}
    if not isinstance(decoding, dict):
        raise BundleError(f"{Path(folder) / 'config.json'}: decoding must be a JSON object, not "
                          f"{type(decoding).__name__}")
    t = decoding.get("temperature")
    if t is None:
        return None
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 10:
        raise BundleError(f"{Path(folder) / 'config.json'}: decoding temperature must be a number "
                          f"from 0 to 10, not {t!r}")
    return float(t)


def play_temperature(folder: str | os.PathLike, given: float | None, default: float = PLAY_TEMPERATURE) -> float:
    """`given` (a command's --temperature) if set, else the bundle's own, else `default`."""
    if given is not None:
        return given
    t = recorded_temperature(folder)
    return default if t is None else t


# -- loaders: a bundle's components, built from its config --------------------------------------
# The model and tokenizer modules are imported inside the loaders: this module is a format that
# everything else reads, so importing it must not pull in the layers built on it.

def load_world_model(folder: str | os.PathLike, device: str | torch.device = "cpu") -> "WorldModel":
    """Build the world model from a bundle's config.json and assign its safetensors weights."""
    from worldsim.model import ModelConfig, WorldModel

    cfg = read_config(folder).get("model")
    if cfg is None:
        raise BundleError(f"bundle {folder} has no world model")
    with torch.device("meta"):  # no memory and no init: every parameter is assigned from the file
        model = build_component(folder, "model", lambda: WorldModel(ModelConfig.from_dict(cfg)))
    load_weights(folder, "model", model)
    return model.to(device).eval()


def load_action_tokenizer(folder: str | os.PathLike) -> "ActionTokenizer":
    """The action tokenizer from a bundle's config.json (it has no weights)."""
    from worldsim.tokenizers.action import action_tokenizer_from_config

    cfg = read_config(folder).get("action_tokenizer")
    if cfg is None:
        raise BundleError(f"bundle {folder} has no action tokenizer")
    return build_component(folder, "action_tokenizer", lambda: action_tokenizer_from_config(cfg))


def _load_vq_tokenizer(cfg: dict[str, Any], folder: str | os.PathLike) -> torch.nn.Module:
    from worldsim.tokenizers.image import ImageTokenizer, ImageTokenizerConfig

    model = build_component(folder, "image_tokenizer",
                            lambda: ImageTokenizer(ImageTokenizerConfig.from_dict(cfg)))
    return load_weights(folder, "image_tokenizer", model)


def _load_tile_tokenizer(cfg: dict[str, Any], folder: str | os.PathLike) -> torch.nn.Module:
    from worldsim.tokenizers.tile import TileTokenizer, TileTokenizerConfig

    model = build_component(folder, "image_tokenizer",
                            lambda: TileTokenizer(TileTokenizerConfig.from_dict(cfg)))
    return load_weights(folder, "image_tokenizer", model)


# Image tokenizers by the "kind" in their config (absent means "vq", the bundles made before
# there was a second kind): kind -> loader(config without "kind", bundle folder) -> module with
# weights. Each kind's module offers encode(uint8 (B, H, W, 3)) -> (B, N), decode, and `cfg`.
IMAGE_TOKENIZER_LOADERS: dict[str, Callable[[dict[str, Any], str | os.PathLike], torch.nn.Module]] = {
    "vq": _load_vq_tokenizer,
    "tile": _load_tile_tokenizer,  # one code per tile, light factored out (tokenizers/tile.py)
}


def load_image_tokenizer(folder: str | os.PathLike, device: str | torch.device = "cpu") -> "ImageTokenizer":
    """Build the image tokenizer from a bundle's config.json and assign its safetensors weights."""
    cfg = read_config(folder).get("image_tokenizer")
    if cfg is None:
        raise BundleError(f"bundle {folder} has no image tokenizer")
    if not isinstance(cfg, dict):
        raise BundleError(f"{Path(folder) / 'config.json'}: bad image_tokenizer config: it must be a "
                          f"JSON object, not {type(cfg).__name__}")
    cfg = dict(cfg)
    kind = cfg.pop("kind", "vq")
    if kind not in IMAGE_TOKENIZER_LOADERS:
        raise BundleError(f"bundle {folder} has an image tokenizer of unknown kind {kind!r}; "
                          f"this worldsim reads {', '.join(IMAGE_TOKENIZER_LOADERS)}")
    # Image tokenizers compute in float32 (frames become float32): a file saved in half
    # precision loads as float32, which holds its weights exactly.
    return IMAGE_TOKENIZER_LOADERS[kind](cfg, folder).float().to(device).eval()


# -- the shipped model -------------------------------------------------------------------------
SHIPPED = Path("assets") / "models" / "crafter"  # in a checkout of the repository


def find_bundle(bundle: str | os.PathLike | None, what: str = "model to play") -> str:
    """`bundle` if given (it must hold a config.json), else the shipped model of this checkout
    (looked for under the working folder and beside the installed package), else one line on
    how to get one."""
    if bundle is not None:
        if not (Path(bundle) / "config.json").is_file():
            raise BundleError(f"{bundle} is not a worldsim bundle (no config.json)")
        return str(bundle)
    import worldsim

    for root in (Path.cwd(), Path(worldsim.__file__).resolve().parent.parent):
        if (root / SHIPPED / "config.json").is_file():
            return str(root / SHIPPED)
    raise BundleError(f"no {what}: the shipped one lives in {SHIPPED} of a worldsim checkout "
                      "(git clone the repository and run from it), or pass --bundle DIR (make one "
                      "as the README's 'Making a model' shows)")
