"""LMSDiscreteScheduler against diffusers: coefficients, trajectories, img2img starts, sync-free loop, no scipy.
Round trips, add_noise and bad input: test_common.py."""

import itertools
import sys

import diffusers
import numpy as np
import pytest
import torch
from scipy import integrate

from fastdiff import LMSDiscreteScheduler
from fastdiff.schedulers.lms_discrete import lms_coefficients

from .harness import SD, STEP_COUNTS, assert_loop_never_syncs, assert_same_loop, run_loop

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


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_loop_never_syncs_with_the_host(config):
    assert_loop_never_syncs(LMSDiscreteScheduler(**config))

