"""Sampling: temperature divides logits, top-k and top-p keep what they should, greedy is argmax."""

import pytest
import torch

from worldsim.inference.sampling import GREEDY, SamplingSettings, filtered_logits, sample

# Probabilities 0.5, 0.3, 0.15, 0.05 over four codes.
PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05])
LOGITS = PROBS.log()[None]  # (1, V)


def kept(s: SamplingSettings, logits=LOGITS) -> list[int]:
    return torch.isfinite(filtered_logits(logits, s))[0].nonzero()[:, 0].tolist()


def test_temperature_divides_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, generator=g) * 3
    for t in (0.5, 1.0, 2.0):
        torch.testing.assert_close(filtered_logits(logits, SamplingSettings(temperature=t)), logits / t)
        tok, conf = sample(logits, SamplingSettings(temperature=t), torch.Generator().manual_seed(1))
        want = (logits / t).softmax(-1).gather(-1, tok[:, None])[:, 0]
        torch.testing.assert_close(conf, want)  # the confidence of the tempered distribution
    # Hot spreads the mass out, cold gathers it on the argmax.
    hot, cold = ((LOGITS / t).softmax(-1)[0, 0] for t in (2.0, 0.5))
    assert hot < PROBS[0] < cold


def test_temperature_changes_the_draws_as_it_should():
    """At T=2 the codes are drawn in proportion to p^(1/2), not to p."""
    n = 20000
    logits = LOGITS.expand(n, -1)
    tok, _ = sample(logits, SamplingSettings(temperature=2.0), torch.Generator().manual_seed(0))
    freq = torch.bincount(tok, minlength=4).float() / n
    want = PROBS.sqrt() / PROBS.sqrt().sum()
    assert (freq - want).abs().max() < 0.02
    assert (freq - PROBS).abs().max() > 0.1


@pytest.mark.parametrize("k,want", [(1, [0]), (2, [0, 1]), (3, [0, 1, 2]), (4, [0, 1, 2, 3]), (0, [0, 1, 2, 3])])
def test_top_k_keeps_the_k_most_likely(k, want):
    assert kept(SamplingSettings(top_k=k)) == want
    tok, _ = sample(LOGITS.expand(4000, -1), SamplingSettings(top_k=k), torch.Generator().manual_seed(0))
    assert sorted(tok.unique().tolist()) == want


@pytest.mark.parametrize("p,want", [(0.45, [0]), (0.75, [0, 1]), (0.9, [0, 1, 2]), (0.97, [0, 1, 2, 3]),
                                    (1.0, [0, 1, 2, 3])])
def test_top_p_keeps_the_smallest_set_that_reaches_p(p, want):
    assert kept(SamplingSettings(top_p=p)) == want
    # The order of the codes does not matter, only their probabilities.
    perm = torch.tensor([2, 0, 3, 1])
    assert kept(SamplingSettings(top_p=p), LOGITS[:, perm]) == sorted(perm.argsort()[want].tolist())


def test_top_k_and_top_p_together_and_renormalised():
    s = SamplingSettings(temperature=1.0, top_k=3, top_p=0.75)
    assert kept(s) == [0, 1]
    tok, conf = sample(LOGITS.expand(1000, -1), s, torch.Generator().manual_seed(0))
    assert set(tok.tolist()) == {0, 1}
    torch.testing.assert_close(conf[tok == 0], torch.full_like(conf[tok == 0], 0.5 / 0.8))


def test_greedy_is_argmax_with_its_probability():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 4, 9, generator=g)
    tok, conf = sample(logits, GREEDY)
    assert torch.equal(tok, logits.argmax(-1))
    torch.testing.assert_close(conf, logits.softmax(-1).max(-1).values)


def test_one_generator_per_row_draws_as_that_row_alone():
    logits = torch.randn(3, 6, 10, generator=torch.Generator().manual_seed(0))
    s = SamplingSettings(temperature=1.0, top_k=5)
    gens = [torch.Generator().manual_seed(10 + i) for i in range(3)]
    together, _ = sample(logits, s, gens)
    for i in range(3):
        alone, _ = sample(logits[i:i + 1], s, torch.Generator().manual_seed(10 + i))
        assert torch.equal(together[i], alone[0])


@pytest.mark.parametrize("bad", [dict(temperature=-1.0), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1)])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        SamplingSettings(**bad)
