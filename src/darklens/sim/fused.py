"""The per-pixel renderer as three Triton kernels (the CUDA fast path).

Same physics and the same noise bits as :func:`darklens.sim.simulator._render_pixels`, which
stays the reference (CPU, and the tests). Why hand-written kernels: the torch path makes ~40
passes over (B, H, W) tensors per image and hashes the noise with emulated int64 arithmetic;
``torch.compile`` fuses some of that but still reached only a quarter of the target. Here each
pixel is ray-shot, lit and hashed in registers:

1. ``_render_kernel``: deflection (SIE + shear + subhalos + line-mass vortex), Sersic source at
   the source-plane position, Sersic lens light -> noise-free image before the PSF. Images
   without subhalos (or without a vortex) skip that loop: it is a uniform per-image branch.
2. ``_psf_rows_kernel``: the separable Gaussian PSF along rows (zero padding).
3. ``_psf_cols_noise_kernel``: the PSF along columns, then Poisson + sky + background noise from
   the same lowbias32 counter hash as :func:`darklens.sim.rng.pixel_normal` (native uint32
   arithmetic here, bit-identical uniforms).

Min-max normalisation stays in torch (two exact reductions and one elementwise pass).

Every pixel is a pure function of its image's parameters and key, so an image does not depend
on the batch it was rendered in. ``atan`` and ``log1p`` are written out (Cephes ``atanf``;
Kahan's log1p) because the Triton interpreter, which the CPU tests use, has no libdevice.
"""

from __future__ import annotations

import os

import torch

from darklens.sim.presets import SimConfig
from darklens.sim.profiles import pixel_centres, psf_taps

try:  # triton ships with CUDA builds of torch; without it the torch path is used
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the torch build
    triton = None

Tensor = torch.Tensor

# per-image parameter columns of the packed (B, N_FIXED + 3 * n_subhalos) table
_FIXED = (
    "lens_cx", "lens_cy", "lens_cos", "lens_sin", "lens_q", "lens_f", "lens_b_over_f",
    "gamma1", "gamma2",
    "src_amp", "src_R", "src_inv_n", "src_bn", "src_a", "src_e", "src_c", "src_cx", "src_cy",
    "ll_amp", "ll_R", "ll_inv_n", "ll_bn", "ll_a", "ll_e", "ll_c",
    "has_sub", "has_vort", "v_ax", "v_ay", "v_bx", "v_by", "v_dx", "v_dy", "v_scale",
    "inv_exposure",
)
N_FIXED = len(_FIXED)
COL = {name: i for i, name in enumerate(_FIXED)}
# the kernels read these runs of columns by offset from their first one
assert COL["src_cy"] == COL["src_amp"] + 8 and COL["ll_c"] == COL["ll_amp"] + 6
assert COL["gamma2"] == COL["lens_cx"] + 8 and COL["has_vort"] == COL["has_sub"] + 1
assert COL["v_scale"] == COL["v_ax"] + 6


def available(device, config: SimConfig) -> bool:
    """True when the fused kernels can render ``config`` on ``device``.

    On the CPU only under Triton's interpreter (``TRITON_INTERPRET=1``, for tests: slow).
    """
    on_device = torch.device(device).type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
    return triton is not None and on_device and config.vort_model == "line"


def _sersic_columns(p: dict[str, Tensor], prefix: str) -> list[Tensor]:
    """(amp, R, 1/n, b_n, (1-e1)/norm, e2/norm, (1+e1)/norm): the Sersic of profiles.sersic."""
    e1, e2, n = p[f"{prefix}_e1"], p[f"{prefix}_e2"], p[f"{prefix}_n_sersic"]
    norm = torch.sqrt(torch.clamp(torch.abs(1.0 - e1 * e1 - e2 * e2), min=1e-6))
    return [p[f"{prefix}_amp"], p[f"{prefix}_R_sersic"], 1.0 / n, 1.9992 * n - 0.3271,
            (1.0 - e1) / norm, e2 / norm, (1.0 + e1) / norm]


def pack_params(config: SimConfig, p: dict[str, Tensor]) -> Tensor:
    """Per-image constants of the kernels, (B, N_FIXED + 3 * n_subhalos) float32.

    Everything that does not vary over pixels is computed here once per image (trig of angles,
    the SIE's b and f, Sersic b_n, the vortex end points), with the formulas of
    :mod:`darklens.sim.profiles`.
    """
    q = p["lens_q"]
    f = torch.clamp(torch.sqrt(torch.clamp(1.0 - q * q, min=0.0)), min=1e-3)
    b = p["theta_E"] * torch.sqrt(q)
    length = p["vort_length"]
    half = 0.5 * torch.where(length > 0, length, torch.ones_like(length))
    ux, uy = torch.cos(p["vort_angle"]) * half, torch.sin(p["vort_angle"]) * half
    ax, ay = p["vort_center_x"] - ux, p["vort_center_y"] - uy
    bx, by = p["vort_center_x"] + ux, p["vort_center_y"] + uy
    dx, dy = bx - ax, by - ay
    te = p["vort_theta_E"]
    src = _sersic_columns(p, "source")
    ll = _sersic_columns(p, "lens_light")
    cols = [
        p["lens_center_x"], p["lens_center_y"], torch.cos(p["lens_phi"]),
        torch.sin(p["lens_phi"]), q, f, b / f, p["gamma1"], p["gamma2"],
        *src, p["source_center_x"], p["source_center_y"],
        *ll,
        (p["sub_count"] > 0).float(), (length > 0).float(), ax, ay, bx, by, dx, dy,
        te * te / (dx * dx + dy * dy), 1.0 / p["exposure"],
    ]
    for i in range(config.n_subhalos):
        t = p[f"sub{i}_theta_E"]
        cols += [t * t, p[f"sub{i}_center_x"], p[f"sub{i}_center_y"]]
    assert len(cols) == N_FIXED + 3 * config.n_subhalos
    return torch.stack([c.to(torch.float32) for c in cols], 1).contiguous()


# Kernel argument names must not be `params`, `specialization` or `options`: Triton 3.6's
# generated launcher has locals of those names, which shadow such an argument.
if triton is not None:

    @triton.jit
    def _atan(x):
        """Cephes atanf: range reduction to |x| <= tan(pi/8), then a degree-9 odd polynomial."""
        ax = tl.abs(x)
        big = ax > 2.414213562373095
        mid = ax > 0.4142135623730950
        safe = tl.where(ax > 0.0, ax, 1.0)
        t = tl.where(big, -1.0 / safe, tl.where(mid, (ax - 1.0) / (ax + 1.0), ax))
        y0 = tl.where(big, 1.5707963267948966, tl.where(mid, 0.7853981633974483, 0.0))
        z = t * t
        poly = (((8.05374449538e-2 * z - 1.38776856032e-1) * z + 1.99777106478e-1) * z
                - 3.33329491539e-1) * z * t + t
        r = y0 + poly
        return tl.where(x < 0.0, -r, r)

    @triton.jit
    def _log1p(x):
        """Kahan: log(u) * x / (u - 1) with u = 1 + x, exact where u rounds to 1."""
        u = 1.0 + x
        d = u - 1.0
        return tl.where(d == 0.0, x, tl.log(u) * (x / tl.where(d == 0.0, 1.0, d)))

    @triton.jit
    def _atan2(y, x):
        """profiles.stable_atan2: half-angle form, atan2(0, 0) = 0."""
        r = tl.sqrt(x * x + y * y)
        den = tl.where(x > 0.0, r + x, y)
        num = tl.where(x > 0.0, y, r - x)
        half = _atan(num / tl.where(den == 0.0, 1.0, den))
        # y == 0 with x < 0: (r - x) / y is +inf, or -inf for y = -0.0; atan gives +-pi/2
        negative_zero = y.to(tl.int32, bitcast=True) < 0
        half = tl.where((den == 0.0) & (r > 0.0),
                        tl.where(negative_zero, -1.5707963267948966, 1.5707963267948966), half)
        return tl.where(r > 0.0, 2.0 * half, 0.0)

    @triton.jit
    def _sersic(x, y, P, base: tl.constexpr, cx, cy):
        amp = tl.load(P + base)
        R = tl.load(P + base + 1)
        inv_n = tl.load(P + base + 2)
        bn = tl.load(P + base + 3)
        a = tl.load(P + base + 4)
        e = tl.load(P + base + 5)
        c = tl.load(P + base + 6)
        dx = x - cx
        dy = y - cy
        xe = a * dx - e * dy
        ye = -e * dx + c * dy
        r = tl.maximum(tl.sqrt(xe * xe + ye * ye), 1e-4)
        reduced = tl.exp(tl.log(r / R) * inv_n)
        return amp * tl.exp(-bn * (reduced - 1.0))

    @triton.jit
    def _mix32(x):
        """lowbias32 on uint32 (wrapping products), as darklens.sim.rng.mix32."""
        x = x ^ (x >> 16)
        x = x * 0x7FEB352D
        x = x ^ (x >> 15)
        x = x * 0x846CA68B
        return x ^ (x >> 16)

    @triton.jit
    def _render_kernel(P, coords, out, n_params, n_sub, W, HW,
                       BLOCK: tl.constexpr, SRC: tl.constexpr, LL: tl.constexpr,
                       LENS: tl.constexpr, HAS: tl.constexpr, VORT: tl.constexpr,
                       SUB0: tl.constexpr):
        img = tl.program_id(0)
        pix = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = pix < HW
        x = tl.load(coords + pix % W, mask=mask, other=0.0)
        y = tl.load(coords + pix // W, mask=mask, other=0.0)
        P = P + img.to(tl.int64) * n_params

        # SIE (profiles.sie_deflection)
        lcx = tl.load(P + LENS)
        lcy = tl.load(P + LENS + 1)
        cos = tl.load(P + LENS + 2)
        sin = tl.load(P + LENS + 3)
        q = tl.load(P + LENS + 4)
        f = tl.load(P + LENS + 5)
        b_f = tl.load(P + LENS + 6)
        dx = x - lcx
        dy = y - lcy
        xr = cos * dx + sin * dy
        yr = -sin * dx + cos * dy
        psi = tl.sqrt(q * q * xr * xr + yr * yr) + 1e-12
        ex = b_f * _atan(f * xr / psi)
        z = f * yr / psi
        ey = b_f * 0.5 * _log1p(2.0 * z / (1.0 - z))
        g1 = tl.load(P + LENS + 7)
        g2 = tl.load(P + LENS + 8)
        alpha_x = cos * ex - sin * ey + (g1 * x + g2 * y)
        alpha_y = sin * ex + cos * ey + (g2 * x - g1 * y)

        if tl.load(P + HAS) > 0.0:  # subhalos: a uniform branch per image
            for i in range(n_sub):
                te2 = tl.load(P + SUB0 + 3 * i)
                sx = x - tl.load(P + SUB0 + 3 * i + 1)
                sy = y - tl.load(P + SUB0 + 3 * i + 2)
                scale = te2 / (sx * sx + sy * sy + 1e-14)
                alpha_x += scale * sx
                alpha_y += scale * sy

        if tl.load(P + HAS + 1) > 0.0:  # the vortex line (profiles.line_mass_deflection)
            px = x - tl.load(P + VORT)
            py = y - tl.load(P + VORT + 1)
            qx = x - tl.load(P + VORT + 2)
            qy = y - tl.load(P + VORT + 3)
            vdx = tl.load(P + VORT + 4)
            vdy = tl.load(P + VORT + 5)
            vscale = tl.load(P + VORT + 6)
            log_ratio = 0.5 * tl.log((px * px + py * py + 1e-12) / (qx * qx + qy * qy + 1e-12))
            angle = _atan2(py * qx - px * qy, px * qx + py * qy)
            alpha_x += vscale * (vdx * log_ratio + vdy * angle)
            alpha_y += vscale * (vdy * log_ratio - vdx * angle)

        value = _sersic(x - alpha_x, y - alpha_y, P, SRC, tl.load(P + SRC + 7),
                        tl.load(P + SRC + 8))
        value += _sersic(x, y, P, LL, lcx, lcy)
        tl.store(out + img.to(tl.int64) * HW + pix, value, mask=mask)

    @triton.jit
    def _psf_rows_kernel(src, taps, out, W, HW, BLOCK: tl.constexpr, K: tl.constexpr):
        img = tl.program_id(0)
        pix = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = pix < HW
        col = pix % W
        base = img.to(tl.int64) * HW
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for i in tl.static_range(K):
            c = col + (i - K // 2)
            v = tl.load(src + base + pix + (i - K // 2), mask=mask & (c >= 0) & (c < W),
                        other=0.0)
            acc += tl.load(taps + i) * v
        tl.store(out + base + pix, acc, mask=mask)

    @triton.jit
    def _psf_cols_noise_kernel(src, taps, keys, P, out, n_params, H, W, HW, sky, bg2,
                               BLOCK: tl.constexpr, K: tl.constexpr, NOISE: tl.constexpr,
                               INV_EXPOSURE: tl.constexpr):
        img = tl.program_id(0)
        pix = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = pix < HW
        row = pix // W
        base = img.to(tl.int64) * HW
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for i in tl.static_range(K):
            r = row + (i - K // 2)
            v = tl.load(src + base + pix + (i - K // 2) * W, mask=mask & (r >= 0) & (r < H),
                        other=0.0)
            acc += tl.load(taps + i) * v
        if NOISE:
            inv_exposure = tl.load(P + img.to(tl.int64) * n_params + INV_EXPOSURE)
            sigma = tl.sqrt((tl.maximum(acc, 0.0) + sky) * inv_exposure + bg2)
            key = tl.load(keys + img).to(tl.uint32)
            counter = pix.to(tl.uint32) * 2
            u1 = _mix32(key ^ _mix32(counter + 0x1B873593))
            u2 = _mix32(key ^ _mix32(counter + 0x1B873594))
            u1 = ((u1 >> 8).to(tl.float32) + 0.5) * (1.0 / 16777216.0)
            u2 = ((u2 >> 8).to(tl.float32) + 0.5) * (1.0 / 16777216.0)
            normal = tl.sqrt(-2.0 * tl.log(u1)) * tl.cos(6.283185307179586 * u2)
            acc = acc + sigma * normal
        tl.store(out + base + pix, acc, mask=mask)


_BLOCK = 1024
_CONSTANTS: dict = {}


def _constants(config: SimConfig, device) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates and PSF taps on ``device``, made once (no host copies when a
    CUDA graph captures the render)."""
    key = (config.image_size, config.pixel_scale, config.psf_fwhm, config.psf_size, str(device))
    if key not in _CONSTANTS:
        _CONSTANTS[key] = (pixel_centres(config).to(device, torch.float32),
                           psf_taps(config, device=device))
    return _CONSTANTS[key]


def render_pixels(config: SimConfig, params: dict[str, Tensor], noise_key: Tensor,
                  device) -> Tensor:
    """Images (B, H, W) before min-max normalisation: the fused equivalent of the torch path.

    Args:
        params: ``draw_params`` output on ``device``.
        noise_key: (B,) int64 per-image noise hash base (``rng.pixel_noise_base``), on ``device``.
    """
    packed = pack_params(config, params)
    B, n_params = packed.shape
    n = config.image_size
    hw = n * n
    coords, taps = _constants(config, device)
    grid = (B, triton.cdiv(hw, _BLOCK))  # images on axis 0: up to 2**31 - 1 (axis 1: 65,535)
    a = torch.empty((B, n, n), device=device, dtype=torch.float32)
    b = torch.empty_like(a)
    _render_kernel[grid](packed, coords, a, n_params, config.n_subhalos, n, hw, BLOCK=_BLOCK,
                         SRC=COL["src_amp"], LL=COL["ll_amp"], LENS=COL["lens_cx"],
                         HAS=COL["has_sub"], VORT=COL["v_ax"], SUB0=N_FIXED, num_warps=8)
    _psf_rows_kernel[grid](a, taps, b, n, hw, BLOCK=_BLOCK, K=config.psf_size, num_warps=8)
    _psf_cols_noise_kernel[grid](
        b, taps, noise_key.contiguous(), packed, a, n_params, n, n, hw, float(config.sky),
        float(config.background_rms) ** 2, BLOCK=_BLOCK, K=config.psf_size,
        NOISE=bool(config.noise), INV_EXPOSURE=COL["inv_exposure"], num_warps=8)
    return a
