"""How strong is the substructure signal of a preset? An ideal-observer chi-square per image.

For each image, render the noise-free image twice with the same drawn parameters, with and
without its substructure (subhalos or vortex), and sum ((with - without) / sigma)^2 over pixels,
sigma being the preset's per-pixel noise. A classifier that knew every other parameter could
detect the substructure at that chi-square; a real one must also untangle it from the unknown
lens, shear and source, so this is an upper bound on separability, not a prediction of accuracy.
A chi-square of order 1 would mean no classifier can tell the classes apart.

    PYTHONPATH=src python benchmarks/substructure_snr.py --preset model_a --images 200

``--refit N`` tightens the bound for the first N images of each class. The smooth model (SIE,
shear, lens light, Sersic source), with the parameters the preset's prior varies free (11 for
model_a; those it fixes stay known), is re-fitted to the image with substructure by
Levenberg-Marquardt from the true parameters, in float64, and the chi-square that no smooth
model absorbs is reported. That is the Asimov statistic of the likelihood-ratio test "this
exact substructure vs none, lens and source unknown", for an observer who also knew where every
subhalo sat. Its Bayes error for two equally likely classes is Phi(-sqrt(chi2) / 2) per image;
the no-substructure images and either other class are two thirds of a balanced set, so one
minus two thirds of the larger pair's mean error bounds three-class accuracy from above. It
assumes a local fit finds the best smooth model (a worse local minimum only overstates the
chi-square, so the bound stays an upper one) and that the prior is locally flat around it. It
grants the observer the substructure's configuration, so it is loose: it says what pixel noise
allows, not what not knowing the subhalos costs.

    PYTHONPATH=src python benchmarks/substructure_snr.py --preset model_a --images 200 --refit 64
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from darklens.sim import simulator as S
from darklens.sim.cosmology import theta_E_squared_per_msun
from darklens.sim.presets import get_config
from darklens.sim.rng import image_keys


def _drawn_params(config, label: int, n_images: int, seed: int, split: int = 0,
                  indices: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The simulator's parameters of images of class ``label``: the first ``n_images`` of the
    train split, or the given ``indices`` of ``split`` (``darklens.sim.rng.SPLITS``), exactly as
    ``darklens simulate --seed`` drew them."""
    indices = torch.arange(n_images) if indices is None else torch.as_tensor(indices)
    k_msun = theta_E_squared_per_msun(config.z_lens, config.z_source, config.H0, config.Om0)
    labels = torch.full(indices.shape, label)
    return S.draw_params(config, image_keys(seed, split, labels, indices), labels, k_msun)


def substructure_chi2(config, label: int, n_images: int, seed: int = 11, split: int = 0,
                      indices: torch.Tensor | None = None) -> np.ndarray:
    """(n_images,) chi-square of the substructure of class ``label`` (1 sphere, 2 vort);
    ``split`` and ``indices`` pick the images as in ``_drawn_params``."""
    params = _drawn_params(config, label, n_images, seed, split, indices)
    with_sub = S.render_noise_free(config, params, "cpu")
    without = S.render_noise_free(config, S.without_substructure(params), "cpu")
    return S.substructure_chi2_map(config, with_sub, without,
                                   params["exposure"]).flatten(1).sum(1).numpy()


#: the smooth model's parameters; the lens ellipticity as (e1, e2), not (q, phi), so the fit
#: has no angle undefined for a round lens
SMOOTH = ("theta_E", "lens_e1", "lens_e2", "lens_center_x", "lens_center_y", "gamma1", "gamma2",
          "lens_light_amp", "lens_light_R_sersic", "lens_light_n_sersic", "lens_light_e1",
          "lens_light_e2", "source_amp", "source_R_sersic", "source_n_sersic", "source_e1",
          "source_e2", "source_center_x", "source_center_y")
_SCALED = ("lens_light_amp", "source_amp")  # finite-difference steps relative to the value


def free_parameters(config) -> list[str]:
    """The smooth-model parameters that the preset's prior varies from image to image.

    As ``draw_params`` draws them: a magnitude from its range, and for the ellipticities, the
    shear and the source position also an angle, random (light, source) or from its range (lens,
    shear), which varies the pair unless the magnitude is fixed at zero (q = 1, no shear, no
    offset). A parameter the prior fixes (model_a's round lens at the origin, its Sersic radii
    and indices) is known to the observer: no image without substructure has another value, so
    letting the fit move it would let a smooth model explain more than any real one can.
    """
    c = config

    def varies(r) -> bool:
        return r[1] > r[0]

    def pair(magnitude, angle_varies: bool, zero: float) -> bool:
        return varies(magnitude) or (angle_varies and magnitude != (zero, zero))

    free = {
        "theta_E": varies(c.theta_E),
        **dict.fromkeys(("lens_e1", "lens_e2"), pair(c.lens_q, varies(c.lens_phi_deg), 1.0)),
        **dict.fromkeys(("lens_center_x", "lens_center_y"), varies(c.lens_center)),
        **dict.fromkeys(("gamma1", "gamma2"),
                        pair(c.shear_gamma, varies(c.shear_phi_deg), 0.0)),
        "lens_light_amp": varies(c.lens_light_amp),
        "lens_light_R_sersic": varies(c.lens_light_R),
        "lens_light_n_sersic": varies(c.lens_light_n),
        **dict.fromkeys(("lens_light_e1", "lens_light_e2"), pair(c.lens_light_q, True, 1.0)),
        "source_amp": varies(c.source_amp),
        "source_R_sersic": varies(c.source_R),
        "source_n_sersic": varies(c.source_n),
        **dict.fromkeys(("source_e1", "source_e2"), pair(c.source_q, True, 1.0)),
        **dict.fromkeys(("source_center_x", "source_center_y"),
                        pair(c.source_offset, True, 0.0)),
    }
    return [name for name in SMOOTH if free[name]]


def _smooth_image(config, params: dict, theta: torch.Tensor, names: list[str]) -> torch.Tensor:
    """Noise-free float64 image with ``names`` set to ``theta`` (B, len(names)), the other
    parameters as drawn, and the substructure removed."""
    p = S.without_substructure(params)
    p.update({name: theta[:, i] for i, name in enumerate(names)})
    c = torch.sqrt(p["lens_e1"] ** 2 + p["lens_e2"] ** 2).clamp(max=0.9)
    p["lens_q"] = (1 - c) / (1 + c)
    p["lens_phi"] = 0.5 * torch.atan2(p["lens_e2"], p["lens_e1"])
    for name in ("source_R_sersic", "lens_light_R_sersic"):
        p[name] = p[name].clamp(min=1e-3)
    for name in ("source_n_sersic", "lens_light_n_sersic"):
        p[name] = p[name].clamp(min=0.2)
    return S.render_noise_free(config, p, "cpu", dtype=torch.float64)


def refit_chi2(config, label: int, n_images: int, seed: int = 11, iters: int = 30,
               start_offset: float = 0.0, split: int = 0, indices: torch.Tensor | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image: chi-square at the start (the true smooth model), after re-fitting it, and
    the fit's shift of theta_E [arcsec] (small shifts keep the locally-flat-prior assumption).

    Args:
        start_offset: start the fit this far (in units of each parameter's finite-difference
            scale x 1e3) from the truth: the no-substructure control, which must fit to ~0.
        split, indices: which images, as in ``_drawn_params`` (then ``n_images`` is ignored).
    """
    drawn = _drawn_params(config, label, n_images, seed, split, indices)
    params = {k: v.double() for k, v in drawn.items()}
    n_images = len(params["theta_E"])
    data = S.render_noise_free(config, params, "cpu", dtype=torch.float64)
    names = free_parameters(config)
    truth = torch.stack([params[name] for name in names], 1)
    smooth = _smooth_image(config, params, truth, names)
    sigma = S.noise_sigma(config, smooth, params["exposure"])
    step = torch.full_like(truth, 1e-6)
    for i, name in enumerate(names):
        if name in _SCALED:
            step[:, i] = 1e-6 * truth[:, i].abs().clamp(min=1e-3)
    noise = torch.randn(truth.shape, dtype=truth.dtype,
                        generator=torch.Generator().manual_seed(seed))
    theta = truth + start_offset * 1e3 * step * noise

    def residual(t: torch.Tensor) -> torch.Tensor:  # (B, pixels), in units of the noise
        return ((data - _smooth_image(config, params, t, names)) / sigma).flatten(1)

    resid = residual(theta)
    current = resid.square().sum(1)
    before = current
    damping = torch.full((n_images,), 1e-3, dtype=torch.float64)
    for _ in range(iters):
        jac = []
        for i in range(len(names)):  # central differences: (B, pixels) per parameter
            d = torch.zeros_like(theta)
            d[:, i] = step[:, i]
            diff = (_smooth_image(config, params, theta + d, names)
                    - _smooth_image(config, params, theta - d, names))
            jac.append((diff / (2 * step[:, i, None, None]) / sigma).flatten(1))
        jac = torch.stack(jac, 2)  # (B, pixels, parameters)
        jtj = jac.transpose(1, 2) @ jac
        jtr = (jac.transpose(1, 2) @ resid[:, :, None])[:, :, 0]
        eye = torch.diag_embed(torch.diagonal(jtj, dim1=1, dim2=2).clamp(min=1e-12))
        delta = torch.linalg.solve(jtj + damping[:, None, None] * eye, jtr)
        trial_resid = residual(theta + delta)
        trial = trial_resid.square().sum(1)
        better = trial < current
        theta = torch.where(better[:, None], theta + delta, theta)
        resid = torch.where(better[:, None], trial_resid, resid)  # no re-render next iteration
        current = torch.where(better, trial, current)
        damping = torch.where(better, damping / 3, damping * 4).clamp(1e-9, 1e9)
    shift = ((theta - truth)[:, names.index("theta_E")].numpy() if "theta_E" in names
             else np.zeros(n_images))  # a fixed theta_E does not move
    return before.numpy(), current.numpy(), shift


def bayes_error(chi2: np.ndarray) -> np.ndarray:
    """Error of the best test between two equally likely Gaussian hypotheses chi2 apart."""
    from scipy.stats import norm

    return norm.cdf(-np.sqrt(np.clip(chi2, 0, None)) / 2)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="model_a")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--set", action="append", default=[], help="preset override key=value")
    ap.add_argument("--refit", type=int, default=0,
                    help="also re-fit the smooth model to the first N images of each class")
    ap.add_argument("--iters", type=int, default=12,
                    help="Levenberg-Marquardt iterations (the fits settle within 5)")
    a = ap.parse_args(argv)
    config = get_config(a.preset, dict(s.split("=", 1) for s in a.set))
    result = {"preset": a.preset, "overrides": a.set, "images": a.images,
              "pixels": config.image_size**2}
    for label, name in ((1, "sphere"), (2, "vort")):
        x2 = substructure_chi2(config, label, a.images)
        result[name] = {f"chi2_p{p}": round(float(np.percentile(x2, p)), 1) for p in (10, 50, 90)}
        print(f"{a.preset} {name:6s} chi2 10/50/90%: "
              + " / ".join(f"{v:,.0f}" for v in result[name].values()))
    if a.refit:
        result["free_parameters"] = free_parameters(config)
        start, control, _ = refit_chi2(config, 0, a.refit, iters=a.iters, start_offset=40.0)
        result["no_substructure_control"] = {
            f"{what}_chi2_p{p}": float(f"{np.percentile(x2, p):.3g}")
            for what, x2 in (("start", start), ("fitted", control)) for p in (50, 90)}
        print(f"control: smooth images fitted from a perturbed start (chi2 50/90%: "
              f"{np.percentile(start, 50):,.0f} / {np.percentile(start, 90):,.0f}), chi2 50/90%: "
              f"{np.percentile(control, 50):.3g} / {np.percentile(control, 90):.3g}")
        pair_error = {}
        for label, name in ((1, "sphere"), (2, "vort")):
            fixed, refit, shift = refit_chi2(config, label, a.refit, iters=a.iters)
            pair_error[name] = float(bayes_error(refit).mean())
            result[name]["refit"] = {
                "images": a.refit,
                **{f"fixed_chi2_p{p}": round(float(np.percentile(fixed, p)), 1)
                   for p in (10, 50, 90)},
                **{f"refit_chi2_p{p}": round(float(np.percentile(refit, p)), 1)
                   for p in (10, 50, 90)},
                "absorbed_median": round(float(np.median(1 - refit / fixed)), 3),
                "theta_E_shift_abs_p50_p90": [round(float(np.percentile(np.abs(shift), p)), 4)
                                              for p in (50, 90)],
                "pair_bayes_error": round(pair_error[name], 4)}
            print(f"{name:6s} chi2 10/50/90%: true smooth model "
                  + " / ".join(f"{np.percentile(fixed, p):,.1f}" for p in (10, 50, 90))
                  + ", re-fitted " + " / ".join(f"{np.percentile(refit, p):,.1f}"
                                                for p in (10, 50, 90))
                  + f"; Bayes error against no substructure {pair_error[name]:.4f}")
        # the no-substructure images and one other class, confused at best at their pair's
        # Bayes error, are two thirds of the images
        bound = 1 - 2 / 3 * max(pair_error.values())
        result["three_class_accuracy_bound"] = round(bound, 4)
        print(f"estimated upper bound on three-class accuracy: {bound:.4f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
