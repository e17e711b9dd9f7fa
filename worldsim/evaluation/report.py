"""The report folder of `worldsim eval`, its one-line summary, and `--compare`.

    OUT/report.json        every number, the settings, the bundle's hash, the code version
    OUT/report.md          the tables a person reads first
    OUT/psnr.png, ssim.png, changed_tiles.png   against the horizon, one line per decoder
    OUT/rollout_NN.mp4     real | each decoder, a few episodes
    OUT/rollouts.gif       two episodes, small enough for a README
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from worldsim.errors import WorldsimError
from worldsim.fileio import atomic_write_json


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def _db(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _num(v: float | None, fmt: str = ".3f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


# The headline rows, in order: (name, how to read it from one source of a report, format).
def _headline_rows() -> list[tuple[str, Any, Any]]:
    def q(phase: str, subset: str, key: str):
        return lambda r, src: _get(r, "quality", src, phase, subset, "overall", key)

    return [
        ("PSNR dB", q("rollout", "all", "psnr"), _db),
        ("PSNR dB, day", q("rollout", "day", "psnr"), _db),
        ("PSNR dB, night", q("rollout", "night", "psnr"), _db),
        ("SSIM", q("rollout", "all", "ssim"), lambda v: _num(v, ".4f")),
        ("changed-tile acc, rollout", q("rollout", "all", "changed_tile_acc"), _pct),
        ("changed-tile acc, day", q("rollout", "day", "changed_tile_acc"), _pct),
        ("changed-tile acc, 1 step (teacher forced)", q("teacher_forced", "all", "changed_tile_acc"), _pct),
        ("changed-tile acc, 1 step, day", q("teacher_forced", "day", "changed_tile_acc"), _pct),
        ("changed-token acc, rollout", q("rollout", "all", "changed_token_acc"), _pct),
        ("changed-token acc, 1 step", q("teacher_forced", "all", "changed_token_acc"), _pct),
        ("scroll agreement (real scrolls)", q("rollout", "all", "scroll_agreement"), _pct),
        ("scroll agreement, 1 step", q("teacher_forced", "all", "scroll_agreement"), _pct),
        ("false scroll (real still)", q("rollout", "all", "false_scroll"), _pct),
        ("keys followed on an open way, own world", q("rollout", "all", "own_way_follow"), _pct),
        ("walks through a wall, own world", q("rollout", "all", "wall_walks"), _pct),
        ("tiles from nowhere per frame, day (tokenizer: the game's own)", q("rollout", "day", "new_tiles_per_frame"),
         lambda v: _num(v, ".2f")),
        ("PSNR drift dB (last - first quarter)", lambda r, src: _get(r, "quality", src, "rollout", "all", "drift", "psnr"), _db),
        ("IDM F1, rollout (movement on Crafter)", lambda r, src: _idm(r, src), lambda v: _num(v, ".3f")),
        ("IDM F1 on the real frames (ceiling)", lambda r, src: _get(r, "idm", "real", "headline"),
         lambda v: _num(v, ".3f")),
        ("ms/frame median", lambda r, src: _get(r, "speed", src, "ms_per_frame_median"), lambda v: _num(v, ".1f")),
        ("ms/frame p95", lambda r, src: _get(r, "speed", src, "ms_per_frame_p95"), lambda v: _num(v, ".1f")),
        ("frames/s", lambda r, src: _get(r, "speed", src, "frames_per_s"), lambda v: _num(v, ".1f")),
    ]


# Headline rows that read Crafter's tile map (left out of a report on another game).
_CRAFTER_ROWS = frozenset({"scroll agreement (real scrolls)", "scroll agreement, 1 step", "false scroll (real still)",
                           "keys followed on an open way, own world", "walks through a wall, own world",
                           "tiles from nowhere per frame, day (tokenizer: the game's own)"})


def _idm(r: dict[str, Any], src: str) -> float | None:
    if not isinstance(r.get("idm"), dict) or src in ("copy-last", "tokenizer"):
        return None
    return _get(r, "idm", "decoders", src, "headline")


# The references beside the decoders, in report order: the game itself replayed from the context
# with the unseen world redrawn (Crafter stores from `worldsim collect`; older reports lack it),
# the last context frame repeated, and the tokenizer's round trip of the real frames.
BASELINES = ("game", "copy-last", "tokenizer")


def decoders(r: dict[str, Any]) -> list[str]:
    return [k for k in r["quality"] if k not in BASELINES]


def sources(r: dict[str, Any]) -> list[str]:
    """Decoders first, then the baselines the report holds."""
    return decoders(r) + [b for b in BASELINES if b in r["quality"]]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    srcs = sources(r)
    ep = r["episodes"]
    out = [f"# worldsim eval: {r['bundle']}",
           "",
           f"{ep['count']} episodes ({ep['source']}) of `{r['data']}`, {s['context']} context frame(s), "
           f"{s['horizon']} dreamed frames under the recorded actions; {ep['day_frames']} day and "
           f"{ep['night_frames']} night target frames. Objective `{r['objective']}`, temperature "
           f"{s['temperature']}, seed {s['seed']}{', with world memory' if s.get('memory') else ''}. Bundle sha256 `{r['bundle_hash'][:16]}`, code "
           f"{r['code'].get('commit', r['code']['worldsim'])[:12]}{' (dirty)' if r['code'].get('dirty') else ''}.",
           "",
           "Changed-tile accuracy: among tiles whose real pixels change visibly from t to t+1 (mean "
           "absolute difference above 4/255), the share the dream matches within the same bound. "
           "One step ahead copy-last scores 0 by construction; along a rollout it keeps the last "
           "context frame, which matches tiles that return to how they looked then. PSNR is "
           "pooled over episodes; night is daylight below 0.5. Tiles from nowhere: inner map tiles "
           "of a frame that look like no tile within one tile of the same place in the frame "
           "before (things that appear or jump mid-view); the tokenizer column is the real game's "
           "own rate.",
           ""]
    if "game" in r["quality"]:
        out += ["The game column is Crafter itself, rebuilt at the last context frame and played under "
                "the same keys, with everything out of the context's view (tiles and creatures) and the "
                "creatures' dice drawn anew: the game's own rules, inventing the rest with its own world "
                "generator. It is the reference for figures no dream can reach against one real "
                "episode (a tree it invents in the real player's path stops it), such as scroll "
                "agreement along the rollout.",
                ""]
    if isinstance(r.get("ways"), dict):
        w = r["ways"]
        out += ["Own world: each source judged in its own frames rather than against the real ones. Of "
                "the move keys pressed between two day frames from a view that is not plain (under "
                "90% one tile), split by whether the tile the player walks into is open in the frame "
                "before: the share after which the view scrolls that way. Which tiles are open is "
                f"learnt from {w['library_moves']} real moves of {w['library_episodes']} episodes "
                + ("(the store holds no episodes but those judged here)" if w.get("library_judged_too")
                   else "not judged here") +
                " (worldsim/evaluation/ways.py). A dream that follows the player scrolls "
                "on every open way and through no wall, wherever its world differs from the real one.",
                ""]
    draws = s.get("draws", 1)
    if draws > 1:
        out += [f"Every rollout (and the game) was drawn {draws} times with other sampling seeds; the "
                "rollout figures pool the draws. IDM scores, the videos and the one-step figures are "
                "from the first draw.", ""]
    crafter = r.get("env", "crafter") == "crafter"
    if not crafter:
        out += [f"On this store's game ({r.get('env')}) the rows that read Crafter's view are left out: scroll "
                "agreement and false scrolls (its map scrolls by whole tiles under a player at its centre), "
                "the own-world rows, tiles from nowhere, and the game column (only Crafter episodes replay "
                "as games). The IDM scores are the ones its report names.", ""]
    out += ["## Headline", ""]
    rows = [[name] + [fmt(get(r, src)) for src in srcs] for name, get, fmt in _headline_rows()
            if crafter or name not in _CRAFTER_ROWS]
    out += [_table(["metric"] + srcs, rows), ""]
    per = [src for src in srcs if _get(r, "quality", src, "rollout_draws")]
    if per:
        out += ["### Each draw", ""]
        rows = [[src, str(k), _db(d.get("psnr")), _pct(d.get("changed_tile_acc")), _pct(d.get("scroll_agreement")),
                 _pct(d.get("false_scroll"))]
                for src in per for k, d in enumerate(r["quality"][src]["rollout_draws"])]
        out += [_table(["source", "draw", "PSNR dB", "changed-tile acc", "scroll agreement", "false scroll"],
                       rows), ""]
    out += ["![PSNR](psnr.png) ![SSIM](ssim.png) ![changed tiles](changed_tiles.png)", ""]

    sens = r["action_sensitivity"]
    out += ["## Action sensitivity", "",
            f"Teacher-forced loss (nats per image token) on {sens['windows']} real windows of "
            f"{sens['frames_per_window']} frames, with the recorded actions and with actions "
            "shuffled across the batch. A model that ignores its actions shows no gap.", ""]
    rows = [[subset, str(sens[subset]["tokens"]), _num(sens[subset]["loss_true"], ".4f"),
             _num(sens[subset]["loss_shuffled"], ".4f"), _num(sens[subset]["gap"], ".4f")]
            for subset in ("all", "changed")]
    out += [_table(["frames", "tokens", "true actions", "shuffled", "gap"], rows), ""]

    tok = r["tokenizer"]
    out += ["## Tokenizer codes on the real frames", "",
            "Flicker: tokens that change between consecutive real frames on tiles that do not change visibly.", ""]
    rows = [[subset, str(tok[subset]["pairs"]), _pct(tok[subset]["flicker"]), _pct(tok[subset]["token_change"]),
             _pct(tok[subset]["tile_change"])] for subset in ("all", "day", "night") if tok[subset]["pairs"]]
    out += [_table(["frame pairs", "pairs", "code flicker", "tokens changed", "tiles changed visibly"], rows), ""]

    if isinstance(r.get("idm"), dict):
        idm = r["idm"]
        out += ["## Inverse dynamics", "",
                f"IDM `{idm['folder']}` predicts the action between consecutive frames; scored against "
                "the actions that drove the dream. `real` is its score on the real frames (the ceiling).", ""]
        groups = [k for k, v in idm["real"].items() if isinstance(v, dict)]
        rows = [["real (ceiling)"] + [_num(_get(idm["real"], g, "macro_f1")) for g in groups]]
        rows += [[k] + [_num(_get(v, g, "macro_f1")) for g in groups] for k, v in idm["decoders"].items()]
        out += [_table(["frames"] + [f"{g} macro F1" for g in groups], rows), ""]
    else:
        out += ["Inverse dynamics: " + str(r.get("idm")), ""]

    out += ["## Drift (last quarter of the horizon minus the first)", ""]
    keys = ["psnr", "ssim", "changed_tile_acc", "changed_token_acc", "scroll_agreement", "false_scroll",
            "own_way_follow"]
    rows = []
    for src in srcs:
        drift = _get(r, "quality", src, "rollout", "all", "drift") or {}
        rows.append([src] + [_num(drift.get(k), ".3f") for k in keys])
    out += [_table(["source"] + keys, rows), ""]

    warm_only = any(v.get("steps_timed") == 1 and v.get("ms_per_batch_step_median") == v.get("first_step_ms")
                    for v in r["speed"].values())
    over = ("the one step there is, its warm-up included (a horizon of 1)" if warm_only else
            "every step but the first (warm-up, in report.json)")
    out += ["## Speed", "", "All episodes as one batch; ms/frame is a batched step's wall time over the "
            f"batch, image decode included, over {over}.", ""]
    rows = [[k, _num(v["passes_per_frame"], ".0f"), _num(v["ms_per_frame_median"], ".2f"),
             _num(v["ms_per_frame_p95"], ".2f"), _num(v["frames_per_s"], ".1f"), str(v["batch"]), v["device"]]
            for k, v in r["speed"].items()]
    out += [_table(["decoder", "passes/frame", "ms/frame median", "p95", "frames/s", "batch", "device"], rows), ""]
    out += [f"LPIPS: {r['lpips']}. FVD: {r['fvd']}.", ""]
    vids = [f for f in r.get("files", {}) if f.endswith(".mp4")]
    if vids or "rollouts.gif" in r.get("files", {}):
        out += ["## Videos", "", "Real | each decoder (the first frames are the real context).", ""]
        if "rollouts.gif" in r["files"]:
            out += ["![rollouts](rollouts.gif)", ""]
        out += [f"- [{v}]({v})" for v in vids] + [""]
    return "\n".join(out)


def write_report(folder: Path, r: dict[str, Any], clips: dict[str, np.ndarray], fps: int,
                 videos: int) -> dict[str, str]:
    """Write every file of the report folder; returns {file name: what it is}."""
    from worldsim.evaluation.media import line_plot, side_by_side, write_videos

    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    srcs = sources(r)
    h = r["settings"]["horizon"]
    for name, key, title, ylabel in (
            ("psnr.png", "psnr", "PSNR against the horizon (pooled over episodes)", "dB"),
            ("ssim.png", "ssim", "SSIM against the horizon", "SSIM"),
            ("changed_tiles.png", "changed_tile_acc", "changed-tile accuracy against the horizon", "share")):
        series = {src: _get(r, "quality", src, "rollout", "all", "per_step", key) or [None] * h for src in srcs
                  if not (key == "changed_tile_acc" and src == "tokenizer")}
        line_plot(folder / name, title, ylabel, series, xs=list(range(1, h + 1)))
        files[name] = "plot"
    n = min(videos, len(clips["real"]))
    if n:
        context = r["settings"]["context"]
        per_ep = [side_by_side({k: v[i] for k, v in clips.items()}, scale=3, context=context) for i in range(n)]
        gif = np.concatenate([side_by_side({k: v[i] for k, v in clips.items()}, scale=2, context=context)
                              for i in range(min(2, n))], 1)
        for k, v in write_videos(folder, per_ep, gif, fps).items():
            files[k] = v if k == "mp4_error" else "video"
    files["report.json"] = "numbers"
    files["report.md"] = "tables"
    r["files"] = files
    atomic_write_json(folder / "report.json", _jsonable(r))
    (folder / "report.md").write_text(markdown(r))
    return files


def _jsonable(x: Any) -> Any:
    """NaN and infinities become null: report.json stays strict JSON."""
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _spread(r: dict[str, Any], src: str, key: str) -> str:
    """" over N draws (per draw lo-hi)" for a figure pooled over sampling draws, else ""."""
    per = [d.get(key) for d in _get(r, "quality", src, "rollout_draws") or []]
    per = [v for v in per if v is not None]
    if not per:
        return ""
    return f" over {len(per)} draws (per draw {_pct(min(per))}-{_pct(max(per))})"


def summary_line(r: dict[str, Any], out: str | Path) -> str:
    parts = []
    for src in decoders(r):
        q = _get(r, "quality", src, "rollout", "all", "overall") or {}
        tf = _get(r, "quality", src, "teacher_forced", "all", "overall") or {}
        sp = r["speed"].get(src, {})
        tf_day = _get(r, "quality", src, "teacher_forced", "day", "overall", "changed_tile_acc")
        text = (f"{src}: {_db(q.get('psnr'))} dB, changed tiles {_pct(q.get('changed_tile_acc'))}"
                f" ({_pct(tf.get('changed_tile_acc'))} one step, {_pct(tf_day)} on day frames)")
        if q.get("scroll_agreement") is not None:
            text += f", scroll {_pct(q.get('scroll_agreement'))}{_spread(r, src, 'scroll_agreement')}"
        if q.get("own_way_follow") is not None:
            text += f", open-way keys followed {_pct(q.get('own_way_follow'))} (own world)"
        text += f", {_num(sp.get('frames_per_s'), '.1f')} frames/s"
        parts.append(text)
    cl = _get(r, "quality", "copy-last", "rollout", "all", "overall", "psnr")
    tk = _get(r, "quality", "tokenizer", "rollout", "all", "overall", "psnr")
    gap = _get(r, "action_sensitivity", "all", "gap")
    game = _get(r, "quality", "game", "rollout", "all", "overall") or {}
    if game:
        parts.append(f"game: {_db(game.get('psnr'))} dB, scroll {_pct(game.get('scroll_agreement'))}"
                     f"{_spread(r, 'game', 'scroll_agreement')}")
    return (f"eval ({r['episodes']['count']} episodes x {r['settings']['horizon']} frames): " + "; ".join(parts)
            + f"; copy-last {_db(cl)} dB, tokenizer {_db(tk)} dB; action gap {_num(gap, '.3f')} nats"
            + f"; flicker {_pct(_get(r, 'tokenizer', 'day', 'flicker'))} (day) -> {Path(out) / 'report.md'}")


def load_report(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    try:
        r = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WorldsimError(f"cannot read the report {p}: {e}") from None
    if not isinstance(r, dict) or r.get("format") != "worldsim.eval":
        raise WorldsimError(f"{p} is not a worldsim eval report")
    return r


def compare(paths: Sequence[str | Path]) -> str:
    """Two or more reports' headline numbers side by side: one column per report and decoder
    (and one per report for the game and copy-last), one row per headline metric."""
    if len(paths) < 2:
        raise WorldsimError("--compare needs two or more reports")
    reports = [(str(p), load_report(p)) for p in paths]
    cols: list[tuple[str, dict[str, Any], str]] = []
    for i, (p, r) in enumerate(reports):
        name = Path(p).name if Path(p).is_dir() else Path(p).parent.name
        for src in [s for s in sources(r) if s != "tokenizer"]:  # its round trip is in report.md
            cols.append((f"{i + 1}:{name} {src}", r, src))
    rows = [[metric] + [fmt(get(r, src)) for _, r, src in cols] for metric, get, fmt in _headline_rows()]
    # The model's (action gap) and the tokenizer's (flicker) figures: under each report's
    # decoders, not repeated under its baselines as if the game or copy-last had them.
    sens = [["action gap (nats)"] + [_num(_get(r, "action_sensitivity", "all", "gap"), ".4f")
                                     if src not in BASELINES else "" for _, r, src in cols],
            ["code flicker, day"] + [_pct(_get(r, "tokenizer", "day", "flicker"))
                                     if src not in BASELINES else "" for _, r, src in cols]]
    legend = "\n".join(f"{i + 1}: {p} ({r['bundle']}, {r['episodes']['count']} episodes, "
                       f"horizon {r['settings']['horizon']})" for i, (p, r) in enumerate(reports))
    differ = _differing_settings([r for _, r in reports])
    if differ:
        legend += ("\nsettings that differ between the reports: "
                   + "; ".join(f"{k} ({', '.join(v)})" for k, v in differ.items()))
    return legend + "\n\n" + _table(["metric"] + [c[0] for c in cols], rows + sens)


# The settings that change what a report's figures measure: (name, how to read it).
_COMPARED_SETTINGS = (
    ("data", lambda r: r.get("data")),
    ("episodes", lambda r: _get(r, "episodes", "count")),
    ("context", lambda r: _get(r, "settings", "context")),
    ("horizon", lambda r: _get(r, "settings", "horizon")),
    ("temperature", lambda r: _get(r, "settings", "temperature")),
    ("draws", lambda r: _get(r, "settings", "draws") or 1),
    ("seed", lambda r: _get(r, "settings", "seed")),
    ("memory", lambda r: bool(_get(r, "settings", "memory"))),  # reports from before --memory: without
)


def _differing_settings(reports: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """{setting: each report's value} for the settings that are not the same in all reports."""
    out = {}
    for name, get in _COMPARED_SETTINGS:
        values = [get(r) for r in reports]
        if any(v != values[0] for v in values):
            out[name] = [str(v) for v in values]
    return out
