"""Simulation presets: one dataclass of parameter ranges per preset, overridable with --set.

A range is a pair ``(lo, hi)``; each image draws uniformly in it (lo == hi fixes the value).
Angles are in arcsec unless named ``*_deg``; masses in solar masses. Sources: ../shared/DEEPLENSE.md
(PyLensing ``gen_data_*`` for model_a; DeepLenseSim ``Model_I..III`` for model_i..iii).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

from darklens.config import apply_overrides
from darklens.errors import DarklensError

Range = tuple[float, float]


@dataclass(frozen=True)
class SimConfig:
    """Every knob of one simulated population (defaults: ``model_a``)."""

    preset: str = "model_a"
    # Camera
    image_size: int = 150  # pixels per side
    pixel_scale: float = 0.05  # arcsec / pixel
    # Cosmology (used to turn masses in Msun into Einstein radii): flat LCDM
    z_lens: float = 0.5
    z_source: float = 1.0
    H0: float = 70.0
    Om0: float = 0.3
    # Main lens: SIE + external shear
    theta_E: Range = (1.1, 1.3)  # Einstein radius [arcsec]
    lens_q: Range = (1.0, 1.0)  # axis ratio (1 = SIS)
    lens_phi_deg: Range = (0.0, 180.0)  # major-axis angle [deg]
    lens_center: Range = (0.0, 0.0)  # x and y offsets, each uniform in this range [arcsec]
    shear_gamma: Range = (0.0, 0.3)  # magnitude
    shear_phi_deg: Range = (0.0, 180.0)  # angle [deg]
    # Lens light: elliptical Sersic at the lens centre (amp 0 switches it off)
    lens_light_amp: Range = (0.1, 0.5)  # intensity at R_sersic
    lens_light_R: Range = (0.5, 0.5)
    lens_light_n: Range = (2.5, 2.5)
    lens_light_q: Range = (0.5, 1.0)
    # Source: elliptical Sersic
    source_amp: Range = (0.5, 1.5)
    source_R: Range = (0.5, 0.5)
    source_n: Range = (1.5, 1.5)
    source_q: Range = (0.7, 1.0)
    source_offset: Range = (0.0, 1.2)  # distance from the optical axis, random direction
    # sphere: point-mass subhalos (always n_subhalos slots; unused slots have zero mass)
    n_subhalos: int = 25
    sub_mass_mode: str = "fraction"  # "fraction": of the Einstein mass; "msun": absolute
    sub_mass_fraction: Range = (0.01, 0.03)  # total subhalo mass / Einstein mass
    sub_mass_msun: Range = (0.8e10, 1.2e10)  # individual mass range, dN/dm ~ m^slope
    sub_mass_slope: float = -0.9
    sub_radius: Range = (0.0, 2.0)  # radial position [arcsec]
    # vort: a straight uniform line mass through (near) the lens centre
    vort_model: str = "line"  # "line": closed form; "chain": vort_chain_points point masses
    vort_chain_points: int = 25
    vort_mass_mode: str = "fraction"  # "fraction" | "msun"
    vort_mass_fraction: Range = (0.01, 0.03)
    vort_mass_msun: Range = (3e10, 3e10)
    vort_length_mode: str = "fixed"  # "fixed": vort_length; "axion": 2 * 0.03e-22 / m_a
    vort_length: Range = (1.0, 1.0)  # [arcsec]
    axion_mass_log10: Range = (-24.0, -22.0)  # log10(m_a / eV), used when length is "axion"
    vort_center: Range = (0.0, 0.0)  # x and y offsets of the line's midpoint [arcsec]
    # Instrument
    psf_fwhm: float = 0.2355  # Gaussian PSF FWHM [arcsec] (sigma 0.1")
    psf_size: int = 11  # kernel side [pixels], odd
    noise: bool = True
    exposure_log10: Range = (2.4771, 2.4771)  # log10(exposure): 300
    sky: float = 0.1  # sky level added before Poisson noise [flux / pixel]
    background_rms: float = 0.0  # extra Gaussian read/background noise [flux / pixel]
    # Dataset construction. 0: every lens, light, shear and source parameter is drawn afresh
    # per image (the physics). K > 0: each is drawn from K values fixed per class, as
    # PyLensing's get_params builds its datasets (5 values per parameter and class, then their
    # product). The class is then readable from the lens and source alone: a label leak, kept
    # to study published numbers made that way (preset "pylensing"), never for new science.
    class_grid: int = 0
    class_grid_seed: int = 0  # which K values each class gets (shared by train/val/test)


_MODEL_I = dict(
    preset="model_i", theta_E=(1.28, 1.28), lens_q=(0.818, 0.818), lens_phi_deg=(0.0, 0.0),
    shear_gamma=(0.05, 0.05), shear_phi_deg=(0.0, 0.0), lens_light_amp=(0.0, 0.0),
    source_amp=(1.0, 1.0), source_R=(0.25, 0.25), source_n=(1.0, 1.0), source_q=(1.0, 1.0),
    source_offset=(0.0, 0.35), sub_mass_mode="msun", sub_mass_msun=(1e6, 1e10),
    sub_radius=(0.25, 2.0), vort_model="line", vort_chain_points=100, vort_mass_mode="msun",
    vort_mass_msun=(3e10, 3e10), vort_length_mode="axion", psf_fwhm=0.087,
    exposure_log10=(3.0, 3.5), sky=0.0, background_rms=0.01,
)

# PyLensing's dataset construction (gen_params_{base,spherical,vortex}, get_params) on model_a's
# camera and light ranges: SIS theta_E 1.2", 25 subhalos at radius U(0, 1") each with
# einstein_radius sqrt(0.01)/25 * theta_E (so together 0.01/25 of the Einstein mass), a vortex of
# the same total, and per-class parameter grids of 5 values. Not copied: PyLensing's 100x100
# camera at 0.1"/px, its fixed lens-light intensity 1.2 and source intensity U(0.7, 0.9).
_PYLENSING = dict(
    preset="pylensing", theta_E=(1.2, 1.2), sub_radius=(0.0, 1.0),
    sub_mass_fraction=(0.0004, 0.0004), vort_mass_fraction=(0.0004, 0.0004), class_grid=5,
)

PRESETS: dict[str, SimConfig] = {
    "model_a": SimConfig(),
    "pylensing": SimConfig(**_PYLENSING),
    "model_i": SimConfig(**_MODEL_I),
    # Euclid VIS-like: 0.101"/px, seeing 0.16"
    "model_ii": SimConfig(**{**_MODEL_I, "preset": "model_ii", "image_size": 64,
                             "pixel_scale": 0.101, "psf_fwhm": 0.16, "psf_size": 7}),
    # HST WFC3 F160W-like: 0.08"/px, PSF FWHM ~0.15"
    "model_iii": SimConfig(**{**_MODEL_I, "preset": "model_iii", "image_size": 64,
                              "pixel_scale": 0.08, "psf_fwhm": 0.15, "psf_size": 9}),
}


def warn_if_leaky(config: SimConfig) -> None:
    """Warn (once per call site) that a class-grid config labels its images by construction."""
    if config.class_grid:
        warnings.warn(
            f"class_grid={config.class_grid} (preset {config.preset}): each class draws its lens "
            "and source from its own fixed values, so a classifier can tell the classes apart "
            "without seeing any substructure. Use it to compare with numbers published on "
            "PyLensing-built data, not to measure dark matter.", stacklevel=3)


def list_presets() -> list[str]:
    """Names of the built-in presets."""
    return sorted(PRESETS)


def get_config(preset: str | SimConfig, overrides: dict | None = None) -> SimConfig:
    """The preset's config with ``--set`` overrides applied and checked.

    Raises:
        DarklensError: unknown preset, unknown key, wrong type or an invalid value.
    """
    if isinstance(preset, SimConfig):
        config = preset
    else:
        if preset not in PRESETS:
            raise DarklensError(
                f"unknown simulation preset {preset!r} (known: {', '.join(list_presets())})"
            )
        config = PRESETS[preset]
    overrides = dict(overrides or {})
    if "preset" in overrides:
        raise DarklensError("--set preset=...: use --preset to choose a preset")
    ranges = {f.name for f in dataclasses.fields(SimConfig) if isinstance(f.default, tuple)}
    for key, value in overrides.items():  # theta_E=1.2 fixes a range; 1.1,1.3 is [1.1, 1.3]
        if key in ranges and isinstance(value, str) and not value.strip().startswith("["):
            overrides[key] = f"[{value}]" if "," in value else f"[{value}, {value}]"
    config = apply_overrides(config, overrides, what="simulation")
    _validate(config)
    return config


def _validate(c: SimConfig) -> None:
    def bad(key: str, why: str) -> DarklensError:
        return DarklensError(f"--set {key}: {why}")

    for f in dataclasses.fields(c):
        v = getattr(c, f.name)
        if isinstance(v, tuple):
            if len(v) != 2 or not all(isinstance(t, (int, float)) for t in v):
                raise bad(f.name, f"expected a range [lo, hi] of two numbers, got {list(v)}")
            if v[0] > v[1]:
                raise bad(f.name, f"range lo > hi: {list(v)}")
    if c.image_size < 4 or c.image_size > 4096:
        raise bad("image_size", f"must be in 4..4096, got {c.image_size}")
    if c.pixel_scale <= 0:
        raise bad("pixel_scale", "must be > 0")
    if c.psf_size < 1 or c.psf_size % 2 == 0:
        raise bad("psf_size", f"must be a positive odd number, got {c.psf_size}")
    if c.psf_fwhm <= 0:
        raise bad("psf_fwhm", "must be > 0")
    if c.n_subhalos < 0 or c.n_subhalos > 1000:
        raise bad("n_subhalos", "must be in 0..1000")
    if c.vort_chain_points < 2:
        raise bad("vort_chain_points", "must be >= 2")
    if not 0 < c.lens_q[0] <= c.lens_q[1] <= 1:
        raise bad("lens_q", "axis ratios must lie in (0, 1]")
    for key in ("lens_light_q", "source_q"):
        lo, hi = getattr(c, key)
        if not 0 < lo <= hi <= 1:
            raise bad(key, "axis ratios must lie in (0, 1]")
    for key in ("lens_light_R", "source_R", "lens_light_n", "source_n"):
        if getattr(c, key)[0] <= 0:
            raise bad(key, "must be > 0")
    for key in ("lens_light_n", "source_n"):
        if getattr(c, key)[0] < 0.2:
            raise bad(key, "Sersic index must be >= 0.2")
    if c.theta_E[0] <= 0:
        raise bad("theta_E", "Einstein radius must be > 0")
    for key in ("sub_mass_fraction", "vort_mass_fraction", "shear_gamma", "lens_light_amp",
                "source_amp", "source_offset", "sub_radius"):
        if getattr(c, key)[0] < 0:
            raise bad(key, f"must be >= 0, got {list(getattr(c, key))}")
    if c.shear_gamma[1] >= 1:
        raise bad("shear_gamma", "shear magnitude must be < 1")
    if c.sky < 0 or c.background_rms < 0:
        raise bad("sky" if c.sky < 0 else "background_rms", "noise levels must be >= 0")
    choices = {
        "sub_mass_mode": ("fraction", "msun"), "vort_mass_mode": ("fraction", "msun"),
        "vort_model": ("line", "chain"), "vort_length_mode": ("fixed", "axion"),
    }
    for key, allowed in choices.items():
        if getattr(c, key) not in allowed:
            raise bad(key, f"expected one of {', '.join(allowed)}, got {getattr(c, key)!r}")
    if c.sub_mass_msun[0] <= 0 or c.vort_mass_msun[0] < 0:
        raise bad("sub_mass_msun", "masses must be > 0")
    if c.z_source <= c.z_lens or c.z_lens <= 0:
        raise bad("z_source", "need 0 < z_lens < z_source")
    if not 0 <= c.class_grid <= 1000:
        raise bad("class_grid", f"must be in 0..1000, got {c.class_grid}")
    if c.vort_length_mode == "fixed" and c.vort_length[0] <= 0:
        raise bad("vort_length", "must be > 0")
