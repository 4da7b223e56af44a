"""The physics bound's model fit (benchmarks/substructure_snr.py --refit), on small images."""


import numpy as np
from bench_scripts import load_benchmark

from darklens.sim.presets import get_config

snr = load_benchmark("substructure_snr")

SMALL = get_config("model_a", {"image_size": "48", "pixel_scale": "0.1"})


def test_the_fit_frees_only_what_the_prior_varies():
    free = snr.free_parameters(SMALL)
    assert len(free) == 11 and "theta_E" in free and "source_center_x" in free
    # model_a's lens is round and at the origin, its Sersic radii and indices fixed
    assert not {"lens_e1", "lens_center_x", "source_R_sersic", "lens_light_n_sersic"} & set(free)
    # a fixed magnitude with a random angle still varies the pair (unless it is q=1, no shear)
    varied = snr.free_parameters(get_config("model_a", {"lens_light_q": "0.7", "lens_q": "0.8",
                                                        "shear_gamma": "0.1"}))
    assert {"lens_light_e1", "lens_e2", "gamma1"} <= set(varied)
    assert "gamma1" not in snr.free_parameters(get_config("model_a", {"shear_gamma": "0"}))


def test_refit_runs_on_a_preset_whose_theta_E_is_fixed():
    config = get_config("model_i", {"image_size": "48", "pixel_scale": "0.1"})
    assert "theta_E" not in snr.free_parameters(config)
    fixed, refit, shift = snr.refit_chi2(config, 1, 2, iters=3)
    assert (refit <= fixed).all() and (shift == 0).all()


def test_refit_recovers_a_smooth_lens_from_a_perturbed_start():
    start, fitted, _ = snr.refit_chi2(SMALL, 0, 4, iters=12, start_offset=40.0)
    assert (start > 10.0).all()  # the perturbation is visible...
    assert (fitted < 1e-4).all()  # ...and the fit removes it


def test_refit_absorbs_part_of_the_substructure_but_not_all():
    fixed, refit, shift = snr.refit_chi2(SMALL, 1, 4, iters=12)
    assert (fixed > 1.0).all()  # the smooth model really lacks the subhalos
    assert (refit < 0.9 * fixed).any()  # the fit absorbs some of their signal...
    assert (refit > 1e-3 * fixed).all()  # ...but a smooth lens cannot mimic them exactly
    assert np.abs(shift).max() < 0.1  # arcsec: the fit stays near the truth


def test_bayes_error_of_two_gaussians():
    assert np.allclose(snr.bayes_error(np.array([0.0, 4.0, 1e4])), [0.5, 0.158655, 0.0],
                       atol=1e-6)
