"""Review of the world model's training loop: bugs found and fixed, one test each."""

import itertools
import json

import pytest

from worldsim.bundle import read_config
from worldsim.train import STATE_FILE, TrainSettings, train


def _args(tiny_tokens, out, *extra):
    tok, shards = tiny_tokens
    return ["train", "--shards", str(shards), "--tokenizer", str(tok), "--out", str(out),
            "--preset", "tiny", "--no-progress", "--batch", "2", "--val-every", "1000", *extra]


def _one_line(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err


def test_context_augmentations_with_ar_are_refused_in_one_line_before_out_is_written(tiny_tokens, tmp_path, capsys):
    """--context-noise (dreams, stalls) with --objective ar raised the objective's ValueError as
    a traceback, once the bundle's config and tokenizer had been written into --out."""
    from worldsim.cli import main

    out = tmp_path / "wm"
    assert main(_args(tiny_tokens, out, "--objective", "ar", "--steps", "1", "--context-noise", "0.1",
                      "--context-stalls", "0.2")) == 2
    err = capsys.readouterr().err
    assert _one_line(err) and "--context-noise, --context-stalls" in err and "block_diffusion" in err
    assert not out.exists()
    # the same flags with block_diffusion train
    assert main(_args(tiny_tokens, out, "--objective", "block_diffusion", "--steps", "1",
                      "--context-noise", "0.1", "--context-stalls", "0.2")) == 0


def test_a_run_that_saved_nothing_does_not_give_the_next_run_its_window(tiny_tokens, tmp_path, monkeypatch):
    """A run that stopped before saving anything leaves only its config, and the folder is free
    for another model; that model took the dead run's --frames instead of its preset's."""
    from worldsim.train import WorldModelRun
    from worldsim.trainer import NonFiniteLoss

    tok, shards = tiny_tokens
    out = tmp_path / "wm"
    real_step = WorldModelRun.train_step
    monkeypatch.setattr(WorldModelRun, "train_step", lambda self: real_step(self) * float("nan"))
    s = TrainSettings(steps=2, batch=2, val_every=1000, val_batches=1, checkpoint_seconds=1e9)
    with pytest.raises(NonFiniteLoss):
        train(shards, tok, out, preset="tiny", settings=TrainSettings(**{**s.__dict__, "frames": 6}),
              progress=False)
    assert read_config(out)["model"]["frames"] == 6 and not (out / STATE_FILE).exists()
    monkeypatch.setattr(WorldModelRun, "train_step", real_step)
    train(shards, tok, out, preset="tiny", settings=s, progress=False)
    assert read_config(out)["model"]["frames"] == 4  # the tiny preset's


def test_the_logged_learning_rate_is_the_one_its_step_used(tiny_tokens, tmp_path, monkeypatch):
    """With --max-minutes the schedule moves with the clock; the log computed the rate again
    after the step, at a later time, and reported the next step's rate, not the one used."""
    import worldsim.trainer as trainer
    from worldsim.train import WorldModelRun

    tok, shards = tiny_tokens
    clock = itertools.count(0.0, 7.0)  # each reading of the loop's clock is 7 s after the last

    class Clock:
        @staticmethod
        def perf_counter() -> float:
            return next(clock)

    monkeypatch.setattr(trainer, "time", Clock)
    applied: dict[int, float] = {}
    real_set = WorldModelRun.set_lr

    def spy(self, lr):
        applied[self.step + 1] = lr  # the step about to be taken, as the log counts it
        real_set(self, lr)

    monkeypatch.setattr(WorldModelRun, "set_lr", spy)
    s = TrainSettings(steps=100, batch=2, warmup=1, val_every=1000, val_batches=1, log_every=1,
                      max_minutes=1.0, checkpoint_seconds=1e9)
    train(shards, tok, tmp_path / "wm", preset="tiny", settings=s, progress=False)
    log = [json.loads(ln) for ln in (tmp_path / "wm" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) >= 3 and len({e["lr"] for e in log}) == len(log)  # the clock moved the rate
    for e in log:
        assert e["lr"] == applied[e["step"]]


def test_init_whose_weights_do_not_fit_its_config_is_one_line(tiny_tokens, tmp_path, capsys):
    """--init from a bundle whose weights are not those of the model its config describes (or
    are torn) printed load_state_dict's traceback."""
    import shutil

    from worldsim.cli import main

    base = ["--objective", "block_diffusion", "--steps", "1"]
    assert main(_args(tiny_tokens, tmp_path / "p48", *base, "--width", "48")) == 0
    assert main(_args(tiny_tokens, tmp_path / "p64", *base)) == 0
    parent = tmp_path / "p64"
    shutil.copy(tmp_path / "p48" / "model.safetensors", parent / "model.safetensors")
    capsys.readouterr()
    assert main(_args(tiny_tokens, tmp_path / "child", *base, "--init", str(parent))) == 2
    err = capsys.readouterr().err
    assert _one_line(err) and f"--init {parent}: cannot load its weights" in err and "size mismatch" in err
    (parent / "model.safetensors").write_bytes(b"\x00" * 16)  # torn
    assert main(_args(tiny_tokens, tmp_path / "child2", *base, "--init", str(parent))) == 2
    err = capsys.readouterr().err
    assert _one_line(err) and f"--init {parent}: cannot load its weights" in err


def test_a_bundle_without_training_state_is_not_trained_again_from_random_weights(tiny_tokens, tmp_path, capsys):
    """A trained bundle without its checkpoint (deleted to save space, or a copied shipped
    model) was trained again from random weights, which then overwrote the trained ones."""
    from worldsim.cli import main

    out = tmp_path / "wm"
    assert main(_args(tiny_tokens, out, "--objective", "block_diffusion", "--steps", "2")) == 0
    (out / STATE_FILE).unlink()
    weights = (out / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(_args(tiny_tokens, out, "--objective", "block_diffusion", "--steps", "3")) == 2
    err = capsys.readouterr().err
    assert _one_line(err) and "no training state" in err and f"--init {out}" in err
    assert (out / "model.safetensors").read_bytes() == weights
    # what the message says works
    assert main(_args(tiny_tokens, tmp_path / "ft", "--objective", "block_diffusion", "--steps", "1",
                      "--init", str(out))) == 0


def test_a_resume_without_ema_says_it_drops_the_checkpoints_average(tiny_tokens, tmp_path, capsys):
    """Resuming an --ema run without --ema dropped its moving average without a word: the bundle
    then held the last step's weights, and the next checkpoint no longer kept the average."""
    from worldsim.train import TrainSettings, train

    tok, shards = tiny_tokens
    base = dict(batch=2, val_every=1000, val_batches=1, warmup=1, checkpoint_seconds=1e9)
    train(shards, tok, tmp_path / "wm", preset="tiny", settings=TrainSettings(steps=1, ema=0.9, **base),
          progress=False)
    capsys.readouterr()
    train(shards, tok, tmp_path / "wm", preset="tiny", settings=TrainSettings(steps=2, **base), progress=False)
    assert "moving average of the weights that this run, without --ema, drops" in capsys.readouterr().out
    train(shards, tok, tmp_path / "wm", preset="tiny", settings=TrainSettings(steps=3, ema=0.9, **base),
          progress=False)
    assert "drops" not in capsys.readouterr().out


def test_shards_of_a_tokenizer_fitted_again_since_say_so(tiny_tokens, tmp_path, capsys):
    """The refusal named the same folder twice: "tokenized with another image tokenizer (X)
    than --tokenizer X's"."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    from worldsim.cli import main

    tok, shards = tiny_tokens
    mine, sh = tmp_path / "tok", tmp_path / "shards"
    shutil.copytree(tok, mine)
    shutil.copytree(shards, sh)
    index = json.loads((sh / "index.json").read_text())
    (sh / "index.json").write_text(json.dumps({**index, "tokenizer": str(mine)}))
    sd = load_file(str(mine / "image_tokenizer.safetensors"))
    name = next(k for k, v in sd.items() if v.is_floating_point())
    save_file({**sd, name: sd[name] + 1}, str(mine / "image_tokenizer.safetensors"))  # fitted again
    assert main(["train", "--shards", str(sh), "--tokenizer", str(mine), "--out", str(tmp_path / "wm"),
                 "--preset", "tiny", "--no-progress", "--steps", "1", "--batch", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not those it holds now" in err and "tokenize again" in err


def test_a_resume_names_the_model_config_it_differs_in_and_the_settings_it_changes(tiny_tokens, tmp_path, capsys):
    """"holds a model with another config" did not say which; and a resume that left out
    --context-noise trained on without it, recording the change over the run's first value."""
    from worldsim.cli import main

    tok, shards = tiny_tokens
    base = ["train", "--shards", str(shards), "--tokenizer", str(tok), "--out", str(tmp_path / "wm"),
            "--objective", "block_diffusion", "--no-progress", "--batch", "2", "--val-every", "1000"]
    assert main(base + ["--preset", "tiny", "--steps", "1", "--context-noise", "0.05"]) == 0
    capsys.readouterr()
    assert main(base + ["--steps", "2"]) == 2  # the preset left out: crafter's, not tiny's
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "another config (" in err and "dim 64 there, 256 asked" in err
    assert main(base + ["--preset", "tiny", "--steps", "2"]) == 0
    assert "--context-noise 0.05 -> 0.0" in capsys.readouterr().out


def test_a_time_budgeted_run_shows_a_bar_that_ends_with_the_budget(tiny_tokens, tmp_path, capsys):
    """Under --max-minutes the bar counted to --steps (100,000 in the recipe): its ETA read 71
    hours for a 75-minute run, and it stopped at a few percent."""
    import re

    from worldsim.train import TrainSettings, train

    tok, shards = tiny_tokens
    s = TrainSettings(steps=100000, max_minutes=0.05, batch=2, val_every=100000, val_batches=1, warmup=1,
                      checkpoint_seconds=1e9)
    r = train(shards, tok, tmp_path / "wm", objective="block_diffusion", preset="tiny", settings=s, progress=True)
    totals = [int(t) for t in re.findall(r"\d+/(\d+) \[", capsys.readouterr().err)]
    assert totals and totals[-1] < 100000 and abs(totals[-1] - r["steps"]) <= max(2, r["steps"] // 5)


def test_a_run_shorter_than_its_warmup_still_decays():
    """The warmup was cut to the whole run: a 60-step run under the default warmup of 100 ended
    at its peak learning rate, never decaying."""
    from worldsim.trainer import lr_at

    rates = [lr_at(i, 1.0, 100, 60, 0.1) for i in range(60)]
    assert max(rates) == pytest.approx(1.0) and rates.index(max(rates)) == 29
    assert rates[-1] < 0.15
    assert [lr_at(i, 1.0, 4, 100) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]  # a short warmup is kept


def test_a_run_its_time_budget_ended_is_done_when_run_again(tiny_tokens, tmp_path, capsys):
    """Run again, a --max-minutes run resumed, validated and wrote its bundle over itself."""
    from worldsim.cli import main
    from worldsim.fileio import file_sha256

    tok, shards = tiny_tokens
    argv = ["train", "--shards", str(shards), "--tokenizer", str(tok), "--out", str(tmp_path / "wm"),
            "--preset", "tiny", "--objective", "block_diffusion", "--no-progress", "--batch", "2",
            "--steps", "100000", "--max-minutes", "0.02", "--val-every", "100000"]
    assert main(argv) == 0
    weights = tmp_path / "wm" / "model.safetensors"
    sha = file_sha256(weights)
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "nothing to do" in out and "--max-minutes 0.02" in out and "resuming" not in out
    assert file_sha256(weights) == sha
    argv[argv.index("0.02")] = "0.04"
    assert main(argv) == 0
    assert "resuming from step" in capsys.readouterr().out


def test_a_resume_with_more_steps_reports_no_warmup_change(tiny_tokens, tmp_path, capsys):
    """The command line cut --warmup to the run before recording it, so a resume with more
    --steps said "--warmup 1 -> 2" though the warmup given was the same (the cut is lr_at's)."""
    from worldsim.cli import main

    tok, shards = tiny_tokens
    base = ["train", "--shards", str(shards), "--tokenizer", str(tok), "--out", str(tmp_path / "wm"),
            "--preset", "tiny", "--objective", "block_diffusion", "--no-progress", "--batch", "2",
            "--val-every", "1000"]
    assert main(base + ["--steps", "2"]) == 0
    capsys.readouterr()
    assert main(base + ["--steps", "4"]) == 0
    assert "other settings" not in capsys.readouterr().out
