"""LMSDiscreteScheduler against diffusers: coefficients, trajectories, sync-free loop, no scipy, bad input."""

import itertools
import sys

import diffusers
import numpy as np
import pytest
import torch
from scipy import integrate

from fastdiff import LMSDiscreteScheduler
from fastdiff.schedulers.lms_discrete import lms_coefficients

from .harness import STEP_COUNTS, assert_same_loop, no_host_sync, run_loop

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
CONFIGS = [
    dict(),
    dict(use_karras_sigmas=True, prediction_type="v_prediction", timestep_spacing="trailing", **SD),
    dict(beta_schedule="squaredcos_cap_v2", use_exponential_sigmas=True, prediction_type="sample",
         timestep_spacing="leading", steps_offset=1),
    dict(use_beta_sigmas=True, timestep_spacing="leading"),
]
# Badly conditioned: coefficients near ±140 that cancel. diffusers integrates a float32 integrand
# with quad(epsrel=1e-4), so its coefficients carry ~1e-7 relative error that the cancellation
# amplifies to ~4e-5 of the sample; with that quadrature made exact the loops agree bit for bit.
ILL_CONDITIONED = dict(use_beta_sigmas=True, prediction_type="sample", timestep_spacing="trailing")


@pytest.mark.parametrize("config,steps", list(itertools.product(CONFIGS, STEP_COUNTS)), ids=str)
def test_loop_matches_diffusers(config, steps):
    assert_same_loop(LMSDiscreteScheduler(**config), diffusers.LMSDiscreteScheduler(**config), steps)


def _exact_lms_coefficient(self, order, t, current_order):
    """diffusers' get_lms_coefficient with a float64 integrand and a tight quad tolerance."""
    s = [float(v) for v in self.sigmas]

    def lagrange_basis(tau):
        p = 1.0
        for k in range(order):
            if k != current_order:
                p *= (tau - s[t - k]) / (s[t - current_order] - s[t - k])
        return p

    return integrate.quad(lagrange_basis, s[t], s[t + 1], epsrel=1e-13, epsabs=0)[0]


def test_loop_equals_diffusers_with_exact_quadrature():
    theirs = diffusers.LMSDiscreteScheduler(**ILL_CONDITIONED)
    theirs.get_lms_coefficient = _exact_lms_coefficient.__get__(theirs)
    assert_same_loop(LMSDiscreteScheduler(**ILL_CONDITIONED), theirs, 7, rtol=1e-7)


def test_coefficients_are_exact_quadrature():
    config = dict(use_karras_sigmas=True, **SD)
    ours, theirs = LMSDiscreteScheduler(**config), diffusers.LMSDiscreteScheduler(**config)
    ours.set_timesteps(50), theirs.set_timesteps(50)
    table = lms_coefficients(ours.sigmas.numpy(), 4)
    for i, k in [(0, 0), (1, 1), (2, 0), (3, 3), (20, 2), (49, 0), (49, 3)]:
        r = min(i + 1, 4)
        exact = _exact_lms_coefficient(theirs, r, i, k)
        assert abs(table[i, k] - exact) <= 1e-12 * abs(exact)
        assert abs(ours.get_lms_coefficient(r, i, k) - exact) <= 1e-12 * abs(exact)
        # diffusers' own value (float32 integrand) is within its float32 noise
        assert abs(theirs.get_lms_coefficient(r, i, k) - exact) <= 1e-6 * abs(exact)


def test_lms_does_not_need_scipy_at_run_time(monkeypatch):
    import fastdiff.schedulers.base as base
    import fastdiff.schedulers.lms_discrete as lms

    for module in (base, lms):
        assert "import scipy" not in open(module.__file__).read()
    for name in ("scipy", "scipy.stats", "scipy.integrate", "scipy.special"):  # a lazy import would now fail
        monkeypatch.setitem(sys.modules, name, None)
    _, x = run_loop(LMSDiscreteScheduler(use_beta_sigmas=True), 7)
    assert torch.isfinite(x).all()


def test_beta_quantile_matches_scipy():
    from scipy import stats

    from fastdiff.schedulers.base import beta_ppf, beta_sigmas

    # Beta(0.6, 0.6) is what diffusers uses: exact to ~1e-15 on all of [0, 1]
    q = np.concatenate([np.linspace(0, 1, 1001), 10.0 ** -np.arange(1, 14), 1 - 10.0 ** -np.arange(1, 14)])
    np.testing.assert_allclose(beta_ppf(q, 0.6, 0.6), stats.beta.ppf(q, 0.6, 0.6), rtol=1e-13, atol=1e-14)
    # other shapes: the same away from q -> 1 (there 1 - x loses digits; scipy works on the complement)
    q = np.linspace(0, 0.99, 100)
    for a, b in [(2.0, 3.0), (0.3, 5.0)]:
        np.testing.assert_allclose(beta_ppf(q, a, b), stats.beta.ppf(q, a, b), rtol=1e-13, atol=1e-14)
    expected = np.array([0.03 + p * (14.6 - 0.03) for p in stats.beta.ppf(1 - np.linspace(0, 1, 50), 0.6, 0.6)])
    assert np.array_equal(beta_sigmas(0.03, 14.6, 50).astype(np.float32), expected.astype(np.float32))


def test_other_orders_and_image_to_image_start_match_diffusers():
    for order, begin in [(2, 0), (3, 0), (4, 5)]:
        results = []
        for s in (LMSDiscreteScheduler(**SD), diffusers.LMSDiscreteScheduler(**SD)):
            s.set_timesteps(12)
            s.set_begin_index(begin)
            x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(order))
            for t in s.timesteps[begin:]:
                x = s.step(torch.sin(s.scale_model_input(x, t)), t, x, order=order).prev_sample
            results.append(x)
        torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-5)


def test_add_noise_matches_diffusers():
    ours, theirs = LMSDiscreteScheduler(**SD), diffusers.LMSDiscreteScheduler(**SD)
    ours.set_timesteps(10), theirs.set_timesteps(10)
    x, n = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = theirs.timesteps[[0, 4, 9]]
    torch.testing.assert_close(ours.add_noise(x, n, t), theirs.add_noise(x, n, t))
    with no_host_sync():
        ours.add_noise(x, n, t)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_loop_never_syncs_with_the_host(config):
    _, x = run_loop(LMSDiscreteScheduler(**config), 7, guard=no_host_sync)
    assert torch.isfinite(x).all()


def test_save_load_round_trip(tmp_path):
    s = LMSDiscreteScheduler(use_karras_sigmas=True, prediction_type="v_prediction", **SD)
    s.save_pretrained(tmp_path / "scheduler")
    loaded = LMSDiscreteScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert loaded.to_json_string() == s.to_json_string()
    theirs = diffusers.LMSDiscreteScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert_same_loop(loaded, theirs, 7)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(beta_schedule="sigmoid"), "beta_schedule='sigmoid'"),
        (dict(prediction_type="noise"), "prediction_type='noise'"),
        (dict(timestep_spacing="uniform"), "timestep_spacing='uniform'"),
        (dict(use_karras_sigmas=True, use_beta_sigmas=True), "only one of"),
    ],
)
def test_unknown_config_values_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LMSDiscreteScheduler(**kwargs)


@pytest.mark.parametrize("steps", [0, -3, 1001, 2.5])
def test_bad_step_counts_are_refused(steps):
    with pytest.raises(ValueError, match="num_inference_steps"):
        LMSDiscreteScheduler().set_timesteps(steps)


@pytest.mark.parametrize("custom", [dict(timesteps=[900, 500, 100]), dict(sigmas=[3.0, 1.0, 0.0])])
def test_custom_schedules_are_refused(custom):
    with pytest.raises(ValueError, match="does not support custom"):
        LMSDiscreteScheduler().set_timesteps(None, **custom)
