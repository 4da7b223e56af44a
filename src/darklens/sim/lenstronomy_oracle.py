"""The same image as darklens.sim, rendered by lenstronomy: the independent oracle.

The physics tests compare ``render_noise_free`` with it pixel by pixel, and the simulator
benchmark times it as the baseline. Both need the identical translation of darklens parameters
into lenstronomy's ``ImageModel``, so it lives here, once.

lenstronomy is only in the ``test`` extra: it is imported inside :func:`lenstronomy_renderer`,
never when ``darklens.sim`` is imported.

    render = lenstronomy_renderer(config)
    image = render(params, b)   # (H, W) numpy, flux per unit pixel area, like darklens
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
import torch

from darklens.errors import DarklensError
from darklens.sim import profiles as P
from darklens.sim.presets import SimConfig


class LenstronomyMissingError(DarklensError, ImportError):
    """lenstronomy is not installed; an ImportError too, so callers may fall back or skip."""


def lens_components(config: SimConfig, p: Mapping[str, float], *,
                    keep_empty_subhalos: bool = False) -> tuple[list[str], list[dict]]:
    """lenstronomy lens model names and kwargs for one image's parameters.

    The vortex becomes ``config.vort_chain_points`` equal point masses spread evenly along the
    recorded line (lenstronomy has no line mass), the darklens ``vort_model="chain"``.

    Args:
        config: the simulator config that drew ``p``.
        p: one image's parameters as floats, named as ``simulator.draw_params`` names them.
        keep_empty_subhalos: keep all ``config.n_subhalos`` point masses even when their
            ``theta_E`` is 0 (the benchmark: the same work as darklens' fixed slots); by default
            only the subhalos that exist are listed.

    Returns:
        (lens model names, their kwargs): SIE, SHEAR, then point masses.
    """
    names = ["SIE", "SHEAR"]
    kwargs = [dict(theta_E=p["theta_E"], e1=p["lens_e1"], e2=p["lens_e2"],
                   center_x=p["lens_center_x"], center_y=p["lens_center_y"]),
              dict(gamma1=p["gamma1"], gamma2=p["gamma2"])]
    for i in range(config.n_subhalos):
        if keep_empty_subhalos or p[f"sub{i}_theta_E"] > 0:
            names.append("POINT_MASS")
            kwargs.append(dict(theta_E=p[f"sub{i}_theta_E"], center_x=p[f"sub{i}_center_x"],
                               center_y=p[f"sub{i}_center_y"]))
    if p["vort_theta_E"] > 0:  # the chain, recomputed here from the recorded line params
        m, half = config.vort_chain_points, p["vort_length"] / 2
        for k in range(m):
            t = 2 * (k + 0.5) / m - 1  # midpoints of m equal pieces of [-1, 1]
            names.append("POINT_MASS")
            kwargs.append(dict(theta_E=p["vort_theta_E"] / math.sqrt(m),  # total mass kept
                               center_x=p["vort_center_x"] + t * half * math.cos(p["vort_angle"]),
                               center_y=p["vort_center_y"] + t * half * math.sin(p["vort_angle"])))
    return names, kwargs


def light_components(p: Mapping[str, float]) -> tuple[dict, dict]:
    """lenstronomy SERSIC_ELLIPSE kwargs (source, lens light); the lens light sits on the lens."""
    source = dict(amp=p["source_amp"], R_sersic=p["source_R_sersic"],
                  n_sersic=p["source_n_sersic"], e1=p["source_e1"], e2=p["source_e2"],
                  center_x=p["source_center_x"], center_y=p["source_center_y"])
    lens_light = dict(amp=p["lens_light_amp"], R_sersic=p["lens_light_R_sersic"],
                      n_sersic=p["lens_light_n_sersic"], e1=p["lens_light_e1"],
                      e2=p["lens_light_e2"], center_x=p["lens_center_x"],
                      center_y=p["lens_center_y"])
    return source, lens_light


def lenstronomy_renderer(config: SimConfig, *, keep_empty_subhalos: bool = False,
                         ) -> Callable[[Mapping[str, torch.Tensor], int], np.ndarray]:
    """A function that renders image ``b`` of a ``draw_params`` batch with lenstronomy.

    Same pixel grid (centred, ``config.pixel_scale`` arcsec), same separable Gaussian PSF taps
    and no supersampling, so the result matches ``simulator.render_noise_free`` to float32
    precision. Noise and normalisation are left to the caller.

    Args:
        config: the simulator config that drew the parameters.
        keep_empty_subhalos: see :func:`lens_components`.

    Returns:
        ``render(params, b) -> (H, W) float64 array``: noise-free, PSF-convolved image in flux
        per unit pixel area (lenstronomy's flux per pixel divided by ``pixel_scale**2``).

    Raises:
        LenstronomyMissingError: lenstronomy is not installed (``pip install darklens[test]``).
    """
    try:
        from lenstronomy.Data.pixel_grid import PixelGrid
        from lenstronomy.Data.psf import PSF
        from lenstronomy.ImSim.image_model import ImageModel
        from lenstronomy.LensModel.lens_model import LensModel
        from lenstronomy.LightModel.light_model import LightModel
    except ImportError as e:
        raise LenstronomyMissingError(
            f"lenstronomy: not installed ({e}); it is the test oracle: "
            "pip install 'darklens[test]'") from None

    n, scale = config.image_size, config.pixel_scale
    taps = P.psf_taps(config, dtype=torch.float64).numpy()
    grid = PixelGrid(nx=n, ny=n, transform_pix2angle=np.eye(2) * scale,
                     ra_at_xy_0=-(n - 1) / 2 * scale, dec_at_xy_0=-(n - 1) / 2 * scale)
    psf = PSF(psf_type="PIXEL", kernel_point_source=np.outer(taps, taps))

    def render(params: Mapping[str, torch.Tensor], b: int) -> np.ndarray:
        p = {k: float(v[b]) for k, v in params.items()}
        lens, kwargs_lens = lens_components(config, p, keep_empty_subhalos=keep_empty_subhalos)
        # a fresh ImageModel per image: the lens model list differs between images
        model = ImageModel(grid, psf, lens_model_class=LensModel(lens),
                           source_model_class=LightModel(["SERSIC_ELLIPSE"]),
                           lens_light_model_class=LightModel(["SERSIC_ELLIPSE"]),
                           kwargs_numerics={"supersampling_factor": 1})
        source, lens_light = light_components(p)
        return model.image(kwargs_lens, [source], [lens_light]) / scale**2

    return render
