"""ScoreSdeVpScheduler against diffusers: a seeded reverse-SDE loop, sync-free, bad input."""

import contextlib

import pytest
import torch
from diffusers.schedulers.deprecated import ScoreSdeVpScheduler as TheirScoreSdeVp

from fastdiff import ScoreSdeVpScheduler

from .harness import no_host_sync

CONFIGS = [dict(), dict(beta_min=0.05, beta_max=15.0, sampling_eps=1e-2)]


def model(x, t):
    """A smooth stand-in for the ε network ε_θ(x, t)."""
    return torch.tanh(x) * (0.5 + 0.5 * t.view(-1, *([1] * (x.ndim - 1))))


def run_loop(scheduler, steps, seed=0, guard=contextlib.nullcontext):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 8, 8, generator=gen)
    scheduler.set_timesteps(steps)
    with guard():
        for t in scheduler.timesteps:
            t_batch = t * torch.ones(x.shape[0])
            x, x_mean = scheduler.step_pred(model(x, t_batch), x, t_batch, generator=gen)
    return x, x_mean


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("steps", [1, 2, 7, 50])
def test_loop_matches_diffusers(config, steps):
    ours, theirs = ScoreSdeVpScheduler(**config), TheirScoreSdeVp(**config)
    got, expected = run_loop(ours, steps), run_loop(theirs, steps)
    torch.testing.assert_close(ours.timesteps, theirs.timesteps, rtol=0, atol=0)
    for a, b in zip(got, expected):
        err, scale = (a - b).abs().max(), b.abs().max()
        assert err <= 1e-5 * scale, f"{err:.3e} > 1e-5 * {scale:.3e}"


def test_scalar_time_matches_diffusers():
    ours, theirs = ScoreSdeVpScheduler(), TheirScoreSdeVp()
    ours.set_timesteps(10), theirs.set_timesteps(10)
    x, score = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    a = ours.step_pred(score, x, ours.timesteps[3], generator=torch.Generator().manual_seed(1))
    b = theirs.step_pred(score, x, theirs.timesteps[3], generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_loop_never_syncs_with_the_host(config):
    x, _ = run_loop(ScoreSdeVpScheduler(**config), 7, guard=no_host_sync)
    assert torch.isfinite(x).all()


def test_save_load_round_trip(tmp_path):
    s = ScoreSdeVpScheduler(**CONFIGS[1])
    s.save_pretrained(tmp_path / "scheduler")
    loaded = ScoreSdeVpScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert loaded.to_json_string() == s.to_json_string()
    theirs = TheirScoreSdeVp.from_pretrained(tmp_path, subfolder="scheduler")
    for a, b in zip(run_loop(loaded, 7), run_loop(theirs, 7)):
        torch.testing.assert_close(a, b)


def test_step_before_set_timesteps_is_refused():
    with pytest.raises(ValueError, match="set_timesteps"):
        ScoreSdeVpScheduler().step_pred(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.ones(1))
