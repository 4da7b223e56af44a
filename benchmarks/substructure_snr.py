"""How strong is the substructure signal of a preset? An ideal-observer chi-square per image.

For each image, render the noise-free image twice with the same drawn parameters, with and
without its substructure (subhalos or vortex), and sum ((with - without) / sigma)^2 over pixels,
sigma being the preset's per-pixel noise. A classifier that knew every other parameter could
detect the substructure at that chi-square; a real one must also untangle it from the unknown
lens, shear and source, so this is an upper bound on separability, not a prediction of accuracy.
A chi-square of order 1 would mean no classifier can tell the classes apart.

    PYTHONPATH=src python benchmarks/substructure_snr.py --preset model_a --images 200
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


def substructure_chi2(config, label: int, n_images: int, seed: int = 11) -> np.ndarray:
    """(n_images,) chi-square of the substructure of class ``label`` (1 sphere, 2 vort)."""
    k_msun = theta_E_squared_per_msun(config.z_lens, config.z_source, config.H0, config.Om0)
    labels = torch.full((n_images,), label)
    params = S.draw_params(config, image_keys(seed, 0, labels, torch.arange(n_images)), labels,
                           k_msun)
    with_sub = S.render_noise_free(config, params, "cpu")
    massless = {k: (torch.zeros_like(v) if k.endswith("theta_E") and k != "theta_E" else v)
                for k, v in params.items()}  # sub{i}_theta_E and vort_theta_E, not the lens
    without = S.render_noise_free(config, massless, "cpu")
    var = ((without.clamp(min=0) + config.sky) / params["exposure"][:, None, None]
           + config.background_rms**2)
    return (((with_sub - without) ** 2) / var).flatten(1).sum(1).numpy()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="model_a")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--set", action="append", default=[], help="preset override key=value")
    a = ap.parse_args(argv)
    config = get_config(a.preset, dict(s.split("=", 1) for s in a.set))
    result = {"preset": a.preset, "overrides": a.set, "images": a.images,
              "pixels": config.image_size**2}
    for label, name in ((1, "sphere"), (2, "vort")):
        x2 = substructure_chi2(config, label, a.images)
        result[name] = {f"chi2_p{p}": round(float(np.percentile(x2, p)), 1) for p in (10, 50, 90)}
        print(f"{a.preset} {name:6s} chi2 10/50/90%: "
              + " / ".join(f"{v:,.0f}" for v in result[name].values()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
