"""ScoreSdeVeScheduler against diffusers, driven as diffusers' ScoreSdeVe pipeline drives it."""

import contextlib

import diffusers
import pytest
import torch

from fastdiff import ScoreSdeVeScheduler

from .harness import no_host_sync

CONFIGS = [dict(), dict(snr=0.2, sigma_min=0.05, sigma_max=50.0, sampling_eps=1e-3, correct_steps=2)]


def model(x, sigma):
    """A smooth stand-in for the score network s_θ(x, σ) ≈ -x / σ²."""
    s = sigma.view(-1, *([1] * (x.ndim - 1)))
    return -x / (s**2 + 1.0) + 0.05 * torch.sin(x)


def run_pipeline_loop(scheduler, steps, seed=0, guard=contextlib.nullcontext):
    """diffusers' ScoreSdeVePipeline loop; returns (last sample, last sample mean)."""
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, 3, 8, 8, generator=gen) * scheduler.init_noise_sigma
    scheduler.set_timesteps(steps)
    scheduler.set_sigmas(steps)
    with guard():
        for i, t in enumerate(scheduler.timesteps):
            sigma_t = scheduler.sigmas[i] * torch.ones(sample.shape[0])
            for _ in range(scheduler.config.correct_steps):
                sample = scheduler.step_correct(model(sample, sigma_t), sample, generator=gen).prev_sample
            output = scheduler.step_pred(model(sample, sigma_t), t, sample, generator=gen)
            sample, sample_mean = output.prev_sample, output.prev_sample_mean
    return sample, sample_mean


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("steps", [1, 2, 7, 50])
def test_pipeline_loop_matches_diffusers(config, steps):
    ours, theirs = ScoreSdeVeScheduler(**config), diffusers.ScoreSdeVeScheduler(**config)
    got, expected = run_pipeline_loop(ours, steps), run_pipeline_loop(theirs, steps)
    torch.testing.assert_close(ours.timesteps, theirs.timesteps, rtol=0, atol=0)
    torch.testing.assert_close(ours.sigmas, theirs.sigmas, rtol=1e-6, atol=0)
    for a, b in zip(got, expected):
        err, scale = (a - b).abs().max(), b.abs().max()
        assert err <= 1e-5 * scale, f"{err:.3e} > 1e-5 * {scale:.3e}"


def test_add_noise_matches_diffusers():
    ours, theirs = ScoreSdeVeScheduler(), diffusers.ScoreSdeVeScheduler()
    x, n, t = torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8), torch.tensor([0, 700, 1999])
    torch.testing.assert_close(ours.add_noise(x, n, t), theirs.add_noise(x, n, t))


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_loop_never_syncs_with_the_host(config):
    sample, _ = run_pipeline_loop(ScoreSdeVeScheduler(**config), 7, guard=no_host_sync)
    assert torch.isfinite(sample).all()


def test_pre_drawn_noise_equals_generator_noise():
    s = ScoreSdeVeScheduler()
    s.set_timesteps(5), s.set_sigmas(5)
    x, score = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    a = s.step_pred(score, s.timesteps[1], x, generator=torch.Generator().manual_seed(3)).prev_sample
    b = s.step_pred(score, s.timesteps[1], x, variance_noise=z).prev_sample
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_steps_before_set_timesteps_are_refused():
    s = ScoreSdeVeScheduler()
    s.timesteps = None
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step_pred(torch.zeros(1, 1, 2, 2), 0.5, torch.zeros(1, 1, 2, 2))


def test_save_load_round_trip(tmp_path):
    s = ScoreSdeVeScheduler(**CONFIGS[1])
    s.save_pretrained(tmp_path / "scheduler")
    loaded = ScoreSdeVeScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert loaded.to_json_string() == s.to_json_string()
    theirs = diffusers.ScoreSdeVeScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    for a, b in zip(run_pipeline_loop(loaded, 7), run_pipeline_loop(theirs, 7)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
