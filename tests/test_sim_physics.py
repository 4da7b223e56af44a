"""Physics of darklens.sim against lenstronomy (independent implementation) and hand values."""

import math

import numpy as np
import pytest
import torch

from darklens.sim import profiles as P
from darklens.sim import simulator as S
from darklens.sim.cosmology import theta_E_squared_per_msun
from darklens.sim.presets import get_config
from darklens.sim.rng import image_keys

lenstronomy = pytest.importorskip("lenstronomy")
from lenstronomy.LensModel.lens_model import LensModel  # noqa: E402
from lenstronomy.LightModel.light_model import LightModel  # noqa: E402

RNG = np.random.default_rng(1234)


def _grid(n=40, scale=0.1):
    t = (np.arange(n) - (n - 1) / 2) * scale + 0.013  # offset: avoid exact centre hits
    x, y = np.meshgrid(t, t)
    return x, y


def _t(a):
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)


def _rel(ours, ref):
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return np.max(np.abs(ours - ref)) / np.max(np.abs(ref))


@pytest.mark.parametrize("q,phi", [(0.55, 0.4), (0.8, -1.1), (0.97, 2.0)])
def test_sie_matches_lenstronomy(q, phi):
    x, y = _grid()
    theta_E, cx, cy = 1.17, 0.08, -0.05
    e1, e2 = (float(v) for v in P.q_phi_to_e1e2(_t(q), _t(phi)))
    ref = LensModel(["SIE"]).alpha(x, y, [dict(theta_E=theta_E, e1=e1, e2=e2, center_x=cx,
                                                center_y=cy)])
    ax, ay = P.sie_deflection(_t(x).float(), _t(y).float(), _t(theta_E), _t(q), _t(phi), cx, cy)
    assert _rel(ax, ref[0]) < 1e-4 and _rel(ay, ref[1]) < 1e-4


def test_sis_deflection_is_theta_E_along_r_hat():
    x, y = _grid()
    ax, ay = P.sie_deflection(_t(x).float(), _t(y).float(), _t(1.3), _t(1.0), _t(0.3))
    r = np.hypot(x, y)
    np.testing.assert_allclose(ax.numpy(), 1.3 * x / r, rtol=0, atol=1.3e-5)
    np.testing.assert_allclose(ay.numpy(), 1.3 * y / r, rtol=0, atol=1.3e-5)


def test_point_mass_and_shear_match_lenstronomy_and_caustics():
    from caustics.lenses.func import (
        reduced_deflection_angle_external_shear,
        reduced_deflection_angle_point,
    )

    x, y = _grid()
    kw = dict(theta_E=0.21, center_x=0.33, center_y=-0.41)
    ref = LensModel(["POINT_MASS"]).alpha(x, y, [kw])
    ax, ay = P.point_mass_deflection(_t(x).float(), _t(y).float(), _t(0.21), 0.33, -0.41)
    assert _rel(ax, ref[0]) < 1e-4 and _rel(ay, ref[1]) < 1e-4
    cx_, cy_ = reduced_deflection_angle_point(_t(0.33), _t(-0.41), _t(0.21), _t(x), _t(y))
    assert _rel(ax, cx_) < 1e-4 and _rel(ay, cy_) < 1e-4
    ref = LensModel(["SHEAR"]).alpha(x, y, [dict(gamma1=0.12, gamma2=-0.07)])
    sx, sy = P.shear_deflection(_t(x).float(), _t(y).float(), _t(0.12), _t(-0.07))
    assert _rel(sx, ref[0]) < 1e-4 and _rel(sy, ref[1]) < 1e-4
    cx_, cy_ = reduced_deflection_angle_external_shear(0.0, 0.0, _t(0.12), _t(-0.07), _t(x), _t(y))
    assert _rel(sx, cx_) < 1e-4 and _rel(sy, cy_) < 1e-4


def test_line_mass_matches_1000_point_chain():
    x, y = _grid(n=50, scale=0.08)
    a, b = np.array([-0.45, 0.2]), np.array([0.5, -0.3])
    theta_total = 0.3
    ax, ay = P.line_mass_deflection(_t(x), _t(y), _t(theta_total), *(_t(v) for v in (*a, *b)))
    n = 1000
    t = (np.arange(n) + 0.5) / n
    ref_x, ref_y = np.zeros_like(x), np.zeros_like(y)
    for ti in t:  # independent float64 point-mass sum (midpoint rule)
        px, py = a + ti * (b - a)
        dx, dy = x - px, y - py
        r2 = dx**2 + dy**2
        ref_x += theta_total**2 / n * dx / r2
        ref_y += theta_total**2 / n * dy / r2
    # the chain differs from the line only within ~ segment/n of the line: compare away from it
    d = np.abs((b[0] - a[0]) * (a[1] - y) - (a[0] - x) * (b[1] - a[1])) / np.linalg.norm(b - a)
    far = d > 0.02
    assert _rel(ax.numpy()[far], ref_x[far]) < 1e-4
    assert _rel(ay.numpy()[far], ref_y[far]) < 1e-4


@pytest.mark.parametrize("n_sersic", [1.0, 2.5])
def test_sersic_matches_lenstronomy(n_sersic):
    x, y = _grid()
    kw = dict(amp=1.7, R_sersic=0.45, n_sersic=n_sersic, e1=0.12, e2=-0.05, center_x=0.1,
              center_y=0.2)
    ref = LightModel(["SERSIC_ELLIPSE"]).surface_brightness(x, y, [kw])
    ours = P.sersic(_t(x).float(), _t(y).float(), *(_t(kw[k]) for k in kw))
    assert _rel(ours, ref) < 1e-4


def test_point_mass_einstein_radius_matches_lenstronomy_cosmology():
    from astropy.cosmology import FlatLambdaCDM
    from lenstronomy.Cosmo.lens_cosmo import LensCosmo

    lc = LensCosmo(z_lens=0.5, z_source=1.0, cosmo=FlatLambdaCDM(H0=70, Om0=0.3))
    k = theta_E_squared_per_msun(0.5, 1.0, 70.0, 0.3)
    for mass in (1e8, 1e10, 1e12):
        assert math.sqrt(k * mass) == pytest.approx(lc_theta(lc, mass), rel=2e-3)


def lc_theta(lc, mass):
    """Point-mass Einstein radius from lenstronomy's critical density: M = pi Sigma_cr theta^2."""
    return math.sqrt(mass / (math.pi * lc.sigma_crit_angle))


@pytest.mark.parametrize("label", [0, 1, 2])
def test_noise_free_image_matches_lenstronomy(label):
    from lenstronomy.Data.pixel_grid import PixelGrid
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel

    n, scale = 48, 0.1
    config = get_config("model_a", {"image_size": str(n), "pixel_scale": str(scale),
                                    "vort_model": "chain", "lens_q": "[0.6, 0.9]",
                                    "n_subhalos": "6", "sub_mass_fraction": "[0.2, 0.3]",
                                    "vort_mass_fraction": "[0.2, 0.3]"})
    labels = torch.tensor([label] * 3)
    keys = image_keys(7, 0, labels, torch.arange(3))
    params = S.draw_params(config, keys, labels)
    ours = S.render_noise_free(config, params, "cpu").numpy()

    taps = P.gaussian_kernel_1d(P.fwhm_to_sigma(config.psf_fwhm) / scale, config.psf_size,
                                dtype=torch.float64).numpy()
    grid = PixelGrid(nx=n, ny=n, transform_pix2angle=np.eye(2) * scale,
                     ra_at_xy_0=-(n - 1) / 2 * scale, dec_at_xy_0=-(n - 1) / 2 * scale)
    psf = PSF(psf_type="PIXEL", kernel_point_source=np.outer(taps, taps))
    for b in range(3):
        p = {k: float(v[b]) for k, v in params.items()}
        lens = ["SIE", "SHEAR"]
        kw = [dict(theta_E=p["theta_E"], e1=p["lens_e1"], e2=p["lens_e2"],
                   center_x=p["lens_center_x"], center_y=p["lens_center_y"]),
              dict(gamma1=p["gamma1"], gamma2=p["gamma2"])]
        for i in range(config.n_subhalos):
            if p[f"sub{i}_theta_E"] > 0:
                lens.append("POINT_MASS")
                kw.append(dict(theta_E=p[f"sub{i}_theta_E"], center_x=p[f"sub{i}_center_x"],
                               center_y=p[f"sub{i}_center_y"]))
        if p["vort_theta_E"] > 0:  # the chain, recomputed here from the recorded line params
            half = p["vort_length"] / 2
            m = config.vort_chain_points
            for k in range(m):
                t = 2 * (k + 0.5) / m - 1
                lens.append("POINT_MASS")
                kw.append(dict(theta_E=p["vort_theta_E"] / math.sqrt(m),
                               center_x=p["vort_center_x"] + t * half * math.cos(p["vort_angle"]),
                               center_y=p["vort_center_y"] + t * half * math.sin(p["vort_angle"])))
        assert (len(lens) > 2) == (label != 0)
        model = ImageModel(grid, psf, lens_model_class=LensModel(lens),
                           source_model_class=LightModel(["SERSIC_ELLIPSE"]),
                           lens_light_model_class=LightModel(["SERSIC_ELLIPSE"]),
                           kwargs_numerics={"supersampling_factor": 1})
        src = dict(amp=p["source_amp"], R_sersic=p["source_R_sersic"],
                   n_sersic=p["source_n_sersic"], e1=p["source_e1"], e2=p["source_e2"],
                   center_x=p["source_center_x"], center_y=p["source_center_y"])
        ll = dict(amp=p["lens_light_amp"], R_sersic=p["lens_light_R_sersic"],
                  n_sersic=p["lens_light_n_sersic"], e1=p["lens_light_e1"],
                  e2=p["lens_light_e2"], center_x=p["lens_center_x"],
                  center_y=p["lens_center_y"])
        ref = model.image(kw, [src], [ll]) / scale**2  # lenstronomy: flux per pixel area
        assert _rel(ours[b], ref) < 1e-4, (label, b, _rel(ours[b], ref))
