"""Draw per-image parameters and render batches of lensed images (B, 1, H, W) in [0, 1].

Pipeline per image (all batched, one pass): ray-shoot the pixel grid through SIE + shear +
(padded) point-mass subhalos + line-mass vortex, evaluate the Sersic source at the source-plane
positions, add the Sersic lens light, convolve with a Gaussian PSF, add Poisson (Gaussian
approximation, variance = counts) + sky + background noise, and min-max normalise.

Every random number comes from :mod:`darklens.sim.rng`, keyed by (seed, split, class, index), so
an image does not depend on which batch, shard or run made it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import torch

from darklens.errors import DarklensError
from darklens.sim import fused
from darklens.sim import profiles as P
from darklens.sim.cosmology import theta_E_squared_per_msun
from darklens.sim.cuda_graph import graphed
from darklens.sim.presets import SimConfig, get_config
from darklens.sim.rng import (
    SPLITS,
    image_keys,
    pixel_hash_tables,
    pixel_noise_base,
    pixel_normal,
    seed_words,
    uniform_block,
)

Tensor = torch.Tensor
_NOISE_STREAM = 0x7FFF  # stream id of the pixel noise (parameter draws count up from 1)


class _Draws:
    """Sequential named random streams for one batch; draw order fixes each stream's id.

    All streams are hashed at once (``uniform_block``); stream j is column j - 1, the same bits
    as ``uniform(keys, j)``.
    """

    def __init__(self, keys: tuple[Tensor, Tensor], n_streams: int,
                 grid: Tensor | None = None, labels: Tensor | None = None):
        self.block = uniform_block(keys, n_streams)
        self.stream = 0
        self.grid, self.labels = grid, labels  # see class_grid_table
        self.gridded = False  # set around the draws a class grid applies to

    def u(self) -> Tensor:
        if self.stream >= self.block.shape[1]:
            raise RuntimeError("draw_params used more random streams than _n_streams() counted")
        self.stream += 1
        u = self.block[:, self.stream - 1]
        if self.gridded and self.grid is not None:  # snap to one of the class's K values
            k = self.grid.shape[-1]
            slot = torch.clamp((u * k).to(torch.int64), max=k - 1)
            u = self.grid[self.stream - 1][self.labels, slot]
        return u

    def range(self, bounds: Sequence[float]) -> Tensor:
        lo, hi = float(bounds[0]), float(bounds[1])
        return lo + (hi - lo) * self.u()


def _power_law(u: Tensor, lo: float, hi: float, slope: float) -> Tensor:
    """Inverse-CDF sample of dN/dm ~ m^slope on [lo, hi] (exp/log: layout-independent bits)."""
    a = slope + 1.0
    if abs(a) < 1e-9:  # dN/dm ~ 1/m: log-uniform
        return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    lo_a, hi_a = lo**a, hi**a
    return torch.exp(torch.log(lo_a + u * (hi_a - lo_a)) / a)


def _n_streams(config: SimConfig) -> int:
    """Random streams ``draw_params`` needs: 27 fixed draws + 3 per subhalo slot (+ spare)."""
    return 32 + 3 * config.n_subhalos


_GRID_TABLES: dict = {}


def class_grid_table(config: SimConfig, device: torch.device) -> Tensor | None:
    """(streams, 3 classes, K) uniform values each class may take, or None (class_grid 0).

    Drawn once from ``class_grid_seed`` with torch's CPU generator, so every split, device and
    batch size sees the same K values per class (PyLensing draws its grid once per class too).
    Kept for the life of the process, never evicted: a captured CUDA graph reads the table by
    its address, so freeing it would let a replay read reused memory.
    """
    if not config.class_grid:
        return None
    key = (config.class_grid, config.class_grid_seed, _n_streams(config), str(device))
    if key not in _GRID_TABLES:
        g = torch.Generator().manual_seed(config.class_grid_seed)
        table = torch.rand((_n_streams(config), 3, config.class_grid), generator=g)
        _GRID_TABLES[key] = table.to(device)
    return _GRID_TABLES[key]


def draw_params(config: SimConfig, keys: tuple[Tensor, Tensor], labels: Tensor,
                k_msun: float | None = None, grid: Tensor | None = None) -> dict[str, Tensor]:
    """Draw every parameter of every image; (B,) float32 tensors named like lenstronomy kwargs.

    Subhalo slots exist for every image (zero mass unless the label is 1, sphere) and the vortex
    exists for every image (zero mass unless the label is 2, vort), so one batch mixes classes.
    ``grid``: :func:`class_grid_table` of the config (looked up when None); it applies to the
    lens, lens light, shear and source draws and to the vortex angle, as in PyLensing.
    """
    c = config
    if grid is None and c.class_grid:
        grid = class_grid_table(c, labels.device)
    d = _Draws(keys, _n_streams(config), grid, labels)
    d.gridded = True
    p: dict[str, Tensor] = {}
    if k_msun is None:  # theta_E^2 per Msun
        k_msun = theta_E_squared_per_msun(c.z_lens, c.z_source, c.H0, c.Om0)
    deg = math.pi / 180.0

    p["theta_E"] = d.range(c.theta_E)
    p["lens_q"] = d.range(c.lens_q)
    p["lens_phi"] = d.range(c.lens_phi_deg) * deg
    p["lens_e1"], p["lens_e2"] = P.q_phi_to_e1e2(p["lens_q"], p["lens_phi"])
    p["lens_center_x"] = d.range(c.lens_center)
    p["lens_center_y"] = d.range(c.lens_center)
    gamma, shear_phi = d.range(c.shear_gamma), d.range(c.shear_phi_deg) * deg
    p["gamma1"], p["gamma2"] = gamma * torch.cos(2 * shear_phi), gamma * torch.sin(2 * shear_phi)
    p["einstein_mass_msun"] = p["theta_E"] ** 2 / k_msun

    p["lens_light_amp"] = d.range(c.lens_light_amp)
    p["lens_light_R_sersic"] = d.range(c.lens_light_R)
    p["lens_light_n_sersic"] = d.range(c.lens_light_n)
    q, phi = d.range(c.lens_light_q), d.u() * math.pi
    p["lens_light_e1"], p["lens_light_e2"] = P.q_phi_to_e1e2(q, phi)

    p["source_amp"] = d.range(c.source_amp)
    p["source_R_sersic"] = d.range(c.source_R)
    p["source_n_sersic"] = d.range(c.source_n)
    q, phi = d.range(c.source_q), d.u() * math.pi
    p["source_e1"], p["source_e2"] = P.q_phi_to_e1e2(q, phi)
    r, phi = d.range(c.source_offset), d.u() * (2 * math.pi)
    p["source_center_x"], p["source_center_y"] = r * torch.cos(phi), r * torch.sin(phi)

    d.gridded = False  # substructure positions and masses: fresh per image, as in PyLensing
    is_sphere = (labels == 1).to(torch.float32)
    fraction = d.range(c.sub_mass_fraction)
    raw = [_power_law(d.u(), *c.sub_mass_msun, c.sub_mass_slope) for _ in range(c.n_subhalos)]
    if c.sub_mass_mode == "fraction" and raw:
        # keep the power-law shape, rescale so the subhalos hold `fraction` of the Einstein mass
        total = raw[0]
        for m in raw[1:]:
            total = total + m
        raw = [m * (fraction * p["einstein_mass_msun"] / total) for m in raw]
    p["sub_count"] = is_sphere * c.n_subhalos
    p["sub_mass_total_msun"] = torch.zeros_like(is_sphere)
    for i, m in enumerate(raw):
        r, phi = d.range(c.sub_radius), d.u() * (2 * math.pi)
        mass = m * is_sphere
        p[f"sub{i}_mass_msun"] = mass
        p[f"sub{i}_theta_E"] = torch.sqrt(mass * k_msun)
        p[f"sub{i}_center_x"], p[f"sub{i}_center_y"] = r * torch.cos(phi), r * torch.sin(phi)
        p["sub_mass_total_msun"] = p["sub_mass_total_msun"] + mass

    is_vort = (labels == 2).to(torch.float32)
    if c.vort_mass_mode == "fraction":
        mass = d.range(c.vort_mass_fraction) * p["einstein_mass_msun"]
    else:
        mass = d.range(c.vort_mass_msun)
    p["vort_mass_msun"] = mass * is_vort
    p["vort_theta_E"] = torch.sqrt(p["vort_mass_msun"] * k_msun)
    log_ma = d.range(c.axion_mass_log10)
    p["axion_mass_ev"] = torch.exp(log_ma * math.log(10.0)) * is_vort
    if c.vort_length_mode == "axion":  # DeepLenseSim: half-length 0.03e-22 / m_a arcsec
        p["vort_length"] = 0.06 * torch.exp(-(log_ma + 22.0) * math.log(10.0))
    else:
        p["vort_length"] = d.range(c.vort_length)
    d.gridded = True
    p["vort_angle"] = d.u() * math.pi
    d.gridded = False
    p["vort_center_x"] = d.range(c.vort_center)
    p["vort_center_y"] = d.range(c.vort_center)
    p["vort_length"] = p["vort_length"] * is_vort

    p["exposure"] = torch.exp(d.range(c.exposure_log10) * math.log(10.0))
    return p


def pixel_grid(config: SimConfig, device, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates (1, H, W) [arcsec] about the optical axis; y grows with row."""
    t = P.pixel_centres(config)
    y, x = torch.meshgrid(t, t, indexing="ij")
    return x.to(device, dtype)[None], y.to(device, dtype)[None]


def deflection(config: SimConfig, x: Tensor, y: Tensor, p: dict[str, Tensor],
               skip_massless: bool = False, stacked: bool = False):
    """Total deflection (B, H, W) of SIE + shear + subhalos + vortex at (x, y).

    Args:
        skip_massless: compute subhalos only for images that have them and the vortex only for
            images that have one (eager CPU speed-up). The result is bit-identical to the padded
            path: a massless term adds exactly +0.0, and the summation order is unchanged.
        stacked: sum the subhalos as one (B, N, H, W) reduction instead of N additions. For
            ``torch.compile``: one small reduction in the graph instead of N unrolled terms
            (compile time), never materialised. Eager, it would allocate N images per image.
    """

    def c(name: str, rows=None) -> Tensor:  # (B,) -> (B, 1, 1) for broadcasting
        v = p[name] if rows is None else p[name][rows]
        return v[:, None, None]

    ax, ay = P.sie_deflection(x, y, c("theta_E"), c("lens_q"), c("lens_phi"),
                              c("lens_center_x"), c("lens_center_y"))
    sx, sy = P.shear_deflection(x, y, c("gamma1"), c("gamma2"))
    ax, ay = ax + sx, ay + sy
    if config.n_subhalos and stacked:
        def col(kind: str) -> Tensor:  # (B, N, 1, 1)
            return torch.stack([p[f"sub{i}_{kind}"] for i in range(config.n_subhalos)], 1)[
                :, :, None, None]
        sx, sy = P.point_mass_deflection(x[:, None], y[:, None], col("theta_E"),
                                         col("center_x"), col("center_y"))
        ax, ay = ax + sx.sum(1), ay + sy.sum(1)
    elif config.n_subhalos:
        rows = torch.nonzero(p["sub_count"] > 0).flatten() if skip_massless else None
        bx, by = (ax, ay) if rows is None else (ax[rows], ay[rows])
        for i in range(config.n_subhalos):  # fixed order: sums are bit-reproducible
            sx, sy = P.point_mass_deflection(x, y, c(f"sub{i}_theta_E", rows),
                                             c(f"sub{i}_center_x", rows),
                                             c(f"sub{i}_center_y", rows))
            bx, by = bx + sx, by + sy
        if rows is None:
            ax, ay = bx, by
        else:
            ax, ay = ax.index_copy(0, rows, bx), ay.index_copy(0, rows, by)
    rows = torch.nonzero(p["vort_length"] > 0).flatten() if skip_massless else None
    vx, vy = _vortex_deflection(config, x, y, {k: c(k, rows) for k in (
        "vort_length", "vort_angle", "vort_center_x", "vort_center_y", "vort_theta_E")})
    if rows is None:
        return ax + vx, ay + vy
    return ax.index_add(0, rows, vx), ay.index_add(0, rows, vy)


def _vortex_deflection(config: SimConfig, x: Tensor, y: Tensor, v: dict[str, Tensor]):
    """Deflection of the vortex line (closed-form line mass or a chain of point masses)."""
    length = v["vort_length"]
    half = 0.5 * torch.where(length > 0, length, torch.ones_like(length))
    ux, uy = torch.cos(v["vort_angle"]) * half, torch.sin(v["vort_angle"]) * half
    cx, cy = v["vort_center_x"], v["vort_center_y"]
    if config.vort_model == "line":
        return P.line_mass_deflection(x, y, v["vort_theta_E"], cx - ux, cy - uy, cx + ux, cy + uy)
    # chain: point masses at the midpoints of n equal pieces of the segment
    n = config.vort_chain_points
    theta_each = v["vort_theta_E"] / math.sqrt(n)
    ax = ay = None
    for k in range(n):
        t = 2.0 * (k + 0.5) / n - 1.0
        sx, sy = P.point_mass_deflection(x, y, theta_each, cx + t * ux, cy + t * uy)
        ax, ay = (sx, sy) if ax is None else (ax + sx, ay + sy)
    return ax, ay


def render_noise_free(config: SimConfig, p: dict[str, Tensor], device,
                      dtype: torch.dtype = torch.float32) -> Tensor:
    """Noise-free, PSF-convolved image (B, H, W) in flux units (float64 for model fitting)."""
    x, y = pixel_grid(config, device, dtype)

    def c(name: str) -> Tensor:
        return p[name][:, None, None]

    compiling = torch.compiler.is_compiling()
    ax, ay = deflection(config, x, y, p, skip_massless=not compiling, stacked=compiling)
    bx, by = x - ax, y - ay
    image = P.sersic(bx, by, c("source_amp"), c("source_R_sersic"), c("source_n_sersic"),
                     c("source_e1"), c("source_e2"), c("source_center_x"), c("source_center_y"))
    image = image + P.sersic(x, y, c("lens_light_amp"), c("lens_light_R_sersic"),
                             c("lens_light_n_sersic"), c("lens_light_e1"), c("lens_light_e2"),
                             c("lens_center_x"), c("lens_center_y"))
    return P.convolve_separable(image, P.psf_taps(config, dtype=dtype, device=device))


def without_substructure(params: dict[str, Tensor]) -> dict[str, Tensor]:
    """The same parameters with every subhalo and the vortex massless (the lens keeps its).

    A massless term deflects by exactly 0; ``sub_count`` 0 also lets both renderers skip the
    subhalos."""
    out = {k: (torch.zeros_like(v) if k.endswith("theta_E") and k != "theta_E" else v)
           for k, v in params.items()}  # sub{i}_theta_E and vort_theta_E
    if "sub_count" in out:
        out["sub_count"] = torch.zeros_like(out["sub_count"])
    return out


def substructure_chi2_map(config: SimConfig, with_sub: Tensor, without: Tensor,
                          exposure: Tensor) -> Tensor:
    """Per-pixel chi-square (B, H, W) of the substructure: the noise-free image with and
    without it, over the noise of the image without it. Its sum over an image is the
    ideal-observer statistic of ``benchmarks/substructure_snr.py``; zero for class "no"."""
    return ((with_sub - without) / noise_sigma(config, without, exposure)) ** 2


def noise_sigma(config: SimConfig, image: Tensor, exposure: Tensor) -> Tensor:
    """Per-pixel noise (B, H, W) of a noise-free ``image``: Poisson on signal + sky (as a
    Gaussian with variance = counts), plus background noise."""
    counts_var = (torch.clamp(image, min=0.0) + config.sky) / exposure[:, None, None]
    return torch.sqrt(counts_var + config.background_rms**2)


def add_noise(config: SimConfig, image: Tensor, exposure: Tensor, keys,
              tables: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Poisson (as Gaussian with variance = counts) on signal + sky, plus background noise.

    Args:
        tables: cached ``pixel_hash_tables`` for the image shape (GPU / compiled path).
    """
    if not config.noise:
        return image
    sigma = noise_sigma(config, image, exposure)
    if _eager_cpu(image.device):
        normal = _cpu_normal(keys, tuple(image.shape[-2:]))
    else:  # hashed per pixel: one fused, batch-independent kernel under torch.compile
        normal = pixel_normal(keys, _NOISE_STREAM, tuple(image.shape[-2:]), tables=tables)
    return image + sigma * normal


def _eager_cpu(device) -> bool:
    """Eager CPU: take the data-dependent fast paths (they would break a compiled graph)."""
    return torch.device(device).type == "cpu" and not torch.compiler.is_compiling()


def _cpu_normal(keys: tuple[Tensor, Tensor], shape: tuple[int, int]) -> Tensor:
    """Per-image N(0, 1) fields from a generator seeded with the image key (CPU fast path).

    One ``randn`` per image: the same size each time, so each image's noise is independent of
    the batch, at a fraction of the cost of hashing every pixel in eager mode.
    """
    k1, k2 = (k.tolist() for k in keys)
    out = torch.empty((len(k1), *shape))
    gen = torch.Generator()
    for b, (a, c) in enumerate(zip(k1, k2)):
        gen.manual_seed((a << 32) | c)
        torch.randn(shape, generator=gen, out=out[b])
    return out


def min_max(image: Tensor) -> Tensor:
    """Per-image min-max normalisation to exactly [0, 1] (a constant image becomes zeros)."""
    flat = image.flatten(1)
    lo = flat.min(dim=1).values[:, None, None]
    span = flat.max(dim=1).values[:, None, None] - lo
    return torch.where(span > 0, (image - lo) / torch.where(span > 0, span, 1.0), 0.0)


def _render_pixels(config: SimConfig, params: dict[str, Tensor], keys: tuple[Tensor, Tensor],
                   tables: tuple[Tensor, Tensor] | None, device,
                   noise_free: Tensor | None = None) -> Tensor:
    """The per-pixel part of :func:`render` (what ``torch.compile`` fuses into a few kernels).

    Parameter draws stay outside: they are a few hundred ops on (B,) vectors, cheap eagerly but
    slow to compile. ``noise_free``: the image's ``render_noise_free``, when the caller has it.
    """
    image = render_noise_free(config, params, device) if noise_free is None else noise_free
    image = add_noise(config, image, params["exposure"], keys, tables)
    return min_max(image)[:, None]


_COMPILED: dict = {}
_TABLES: dict = {}


def _noise_tables(config: SimConfig, device: torch.device):
    if not config.noise:
        return None
    key = (config.image_size, str(device))
    if key not in _TABLES:
        _TABLES[key] = pixel_hash_tables((config.image_size, config.image_size), device)
    return _TABLES[key]


BACKENDS = ("auto", "eager", "compile", "fused")


def choose_backend(backend: str, config: SimConfig, device) -> str:
    """Resolve ``backend``: 'auto' is the fused Triton kernels on CUDA, else eager torch."""
    if backend not in BACKENDS:
        raise DarklensError(f"unknown simulator backend {backend!r} (known: {', '.join(BACKENDS)})")
    if backend == "auto":
        cuda = torch.device(device).type == "cuda"
        return "fused" if cuda and fused.available(device, config) else "eager"
    if backend == "fused" and not fused.available(device, config):
        raise DarklensError("backend 'fused' needs CUDA, triton and vort_model=line")
    return backend


@functools.lru_cache(maxsize=16)
def _seed_words_on(seed: int, device: torch.device) -> Tensor:
    """``seed_words(seed)`` as a (2,) int64 tensor on ``device``, copied there once."""
    return torch.tensor(seed_words(seed), dtype=torch.int64, device=device)


def render(config: SimConfig, seed: int, split_id: int | Tensor, labels: Tensor,
           indices: Tensor, device, backend: str = "auto", cuda_graph: bool = True,
           with_signal: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
    """Images (B, 1, H, W) and params for explicit per-image (split, label, index).

    Args:
        backend: how the per-pixel part runs: 'eager' torch (the reference), 'compile'
            (``torch.compile``, one program per shape), 'fused' (the Triton kernels of
            :mod:`darklens.sim.fused`, CUDA) or 'auto' (fused where available, else eager).
        cuda_graph: 'fused' only: replay the whole batch (parameter draws included) as one
            CUDA graph, captured per (config, batch size, device). Same bits, less launch time.
        with_signal: images (B, 2, H, W) instead: channel 1 is where the substructure is, its
            :func:`substructure_chi2_map` (two more noise-free renders), for training with
            signal supervision. Channel 0 is the same image as without it.
    """
    device = torch.device(device)
    backend = choose_backend(backend, config, device)
    labels = labels.to(device=device, dtype=torch.int64)
    indices = indices.to(device=device, dtype=torch.int64)
    if isinstance(split_id, Tensor):
        split_id = split_id.to(device=device, dtype=torch.int64)
    k_msun = theta_E_squared_per_msun(config.z_lens, config.z_source, config.H0, config.Om0)
    if device.type == "cuda" and device.index is None:  # the caches are keyed by it
        device = torch.device("cuda", torch.cuda.current_device())
    grid = class_grid_table(config, device)  # copied to the device here, never in a graph
    if backend == "fused":
        def body(words, split, labels, indices):
            keys = image_keys(words, split, labels, indices)
            params = draw_params(config, keys, labels, k_msun, grid)
            noise_key = pixel_noise_base(keys, _NOISE_STREAM)
            images = min_max(fused.render_pixels(config, params, noise_key, device))[:, None]
            if with_signal:
                quiet = dataclasses.replace(config, noise=False)
                chi2 = substructure_chi2_map(
                    config, fused.render_pixels(quiet, params, noise_key, device),
                    fused.render_pixels(quiet, without_substructure(params), noise_key, device),
                    params["exposure"])
                images = torch.cat([images, chi2[:, None]], 1)
            return images, params

        # No host-to-GPU copy per batch (each would wait for the GPU: see SimulatedStream)
        words = _seed_words_on(int(seed), device)
        split = (torch.broadcast_to(split_id, labels.shape) if isinstance(split_id, Tensor)
                 else torch.full(labels.shape, int(split_id), dtype=torch.int64, device=device))
        inputs = [words, split, labels, indices]
        if device.type != "cuda":  # the Triton interpreter (CPU tests): no graphs
            return body(*inputs)
        # Triton launches on the current device: make it the tensors' device
        with torch.cuda.device(device):
            if not cuda_graph:
                return body(*inputs)
            key = (config, labels.shape[0], str(device), with_signal)
            return graphed(key, body, inputs, device)(*inputs)
    keys = image_keys(int(seed), split_id, labels, indices)
    params = draw_params(config, keys, labels, k_msun, grid)
    fn = _render_pixels
    if backend == "compile":
        fn = _COMPILED.setdefault("pixels", torch.compile(_render_pixels, dynamic=False))
    tables = _noise_tables(config, device) if backend == "compile" or device.type != "cpu" else None
    if not with_signal:
        return fn(config, params, keys, tables, device), params
    clean = render_noise_free(config, params, device)
    # eagerly the image is made from the same noise-free render (same bits, one render less);
    # a compiled render keeps its own, so channel 0 stays the image it renders without a signal
    images = fn(config, params, keys, tables, device, clean if backend == "eager" else None)
    chi2 = substructure_chi2_map(config, clean,
                                 render_noise_free(config, without_substructure(params), device),
                                 params["exposure"])
    return torch.cat([images, chi2[:, None]], 1), params


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' -> cuda when available; 'cuda' without a GPU is a one-line error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DarklensError("--device cuda: no CUDA device is available")
    return device


def simulate_batch(preset: str | SimConfig = "model_a", labels=None, seed: int = 0,
                   split: str = "train", start_index: int = 0, device="cpu",
                   overrides: dict | None = None, indices=None, backend: str = "auto"):
    """Simulate one batch.

    Args:
        preset: preset name or a :class:`SimConfig`.
        labels: (B,) class ids (0 no, 1 sphere, 2 vort), tensor or list.
        seed: dataset seed.
        split: "train", "val", "test" or "stream".
        start_index: image i gets index ``start_index + i`` unless ``indices`` is given.
        device: "cpu", "cuda", "auto" or a torch.device.
        overrides: ``--set`` style overrides of the preset.
        indices: optional explicit (B,) per-image indices.
        backend: see :func:`render`.

    Returns:
        images (B, 1, H, W) float32 in [0, 1], labels (B,) int64, params dict name -> (B,) tensor.
    """
    config = get_config(preset, overrides)
    if split not in SPLITS:
        raise DarklensError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    device = resolve_device(device)
    labels = torch.as_tensor(labels if labels is not None else [0, 1, 2], dtype=torch.int64)
    if labels.ndim != 1 or (labels < 0).any() or (labels > 2).any():
        raise DarklensError("labels must be a 1-D sequence of class ids 0, 1, 2")
    if indices is None:
        indices = start_index + torch.arange(labels.shape[0], dtype=torch.int64)
    indices = torch.as_tensor(indices, dtype=torch.int64)
    images, params = render(config, seed, SPLITS[split], labels, indices, device, backend)
    return images, labels.to(device), params
