"""Batched lens and light profiles in lenstronomy's conventions (angles in arcsec).

Every function broadcasts: parameters are (B, 1, 1) tensors, coordinates (1, H, W) or (B, H, W).
caustics (MIT) is the second oracle in the tests rather than a runtime dependency: its import
pulls in astropy (absent from the GPU image) and ~1.5 s of CPU, its SIE shifts q = 1 to
1 - 1e-6 and defines the Einstein radius differently from lenstronomy, and it uses atanh/pow.
These functions use only ops whose CPU results do not depend on memory layout (``atan2``,
``atanh`` and ``pow`` differ between PyTorch's vectorised and scalar loops, which would make
image bytes depend on the batch size).
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


def stable_atan2(y: Tensor, x: Tensor) -> Tensor:
    """atan2 from the half-angle identities tan(t/2) = y/(r+x) = (r-x)/y; result in (-pi, pi]."""
    r = torch.sqrt(x * x + y * y)
    half = torch.atan(torch.where(x > 0, y / (r + x), (r - x) / y))
    return torch.where(r > 0, 2.0 * half, 0.0)  # atan2(0, 0) = 0, as numpy


def stable_atanh(z: Tensor) -> Tensor:
    """atanh(z) = 0.5 * log1p(2z / (1 - z)), accurate for small z."""
    return 0.5 * torch.log1p(2.0 * z / (1.0 - z))


def q_phi_to_e1e2(q: Tensor, phi: Tensor) -> tuple[Tensor, Tensor]:
    """Axis ratio and position angle [rad] -> lenstronomy ellipticity (e1, e2)."""
    c = (1.0 - q) / (1.0 + q)
    return c * torch.cos(2.0 * phi), c * torch.sin(2.0 * phi)


def sie_deflection(x, y, theta_E, q, phi, center_x=0.0, center_y=0.0):
    """Singular isothermal ellipsoid deflection (Kormann et al. 1994; Keeton 2001, eqs. 34-35).

    Matches lenstronomy ``SIE`` with theta_E the product-average Einstein radius, so
    b = theta_E * sqrt(q) is the major-axis scale of kappa = b / (2 sqrt(q^2 x^2 + y^2)).
    q = 1 gives the SIS: alpha = theta_E * r_hat.

    Args:
        x, y: image-plane coordinates [arcsec].
        theta_E: Einstein radius [arcsec].
        q: axis ratio (0, 1].
        phi: position angle of the major axis [rad], counter-clockwise from +x.
        center_x, center_y: lens centre [arcsec].

    Returns:
        (alpha_x, alpha_y) [arcsec].
    """
    cos, sin = torch.cos(phi), torch.sin(phi)
    dx, dy = x - center_x, y - center_y
    xr = cos * dx + sin * dy  # rotate into the major-axis frame
    yr = -sin * dx + cos * dy
    b = theta_E * torch.sqrt(q)
    # f -> 0 is the SIS limit; atan(f t)/f -> t. Flooring f at 1e-3 changes alpha by < 4e-7.
    f = torch.clamp(torch.sqrt(torch.clamp(1.0 - q * q, min=0.0)), min=1e-3)
    psi = torch.sqrt(q * q * xr * xr + yr * yr) + 1e-12  # + tiny: finite at the centre
    ax = b / f * torch.atan(f * xr / psi)
    ay = b / f * stable_atanh(f * yr / psi)
    return cos * ax - sin * ay, sin * ax + cos * ay


def shear_deflection(x, y, gamma1, gamma2):
    """External shear about the origin: alpha = (g1 x + g2 y, g2 x - g1 y) (Meneghetti eq. 3.80).

    Same as lenstronomy SHEAR and caustics' ``reduced_deflection_angle_external_shear`` (the
    tests compare all three).
    """
    return gamma1 * x + gamma2 * y, gamma2 * x - gamma1 * y


def point_mass_deflection(x, y, theta_E, center_x, center_y):
    """Point mass: alpha = theta_E^2 (x - x0) / |x - x0|^2 (lenstronomy POINT_MASS).

    Same formula as caustics' ``reduced_deflection_angle_point`` (the tests compare both) in
    fewer passes over memory: this runs n_subhalos times per image. A massless slot gives
    exactly 0.
    """
    dx, dy = x - center_x, y - center_y
    scale = (theta_E * theta_E) / (dx * dx + dy * dy + 1e-14)
    return scale * dx, scale * dy


def line_mass_deflection(x, y, theta_E_total, x_a, y_a, x_b, y_b):
    """Uniform line mass from A to B: conj(alpha) = theta_E^2 / (B - A) * log((z - A)/(z - B)).

    The integral of point-mass deflections theta_E^2 / conj(z - w) along the segment with linear
    density theta_E^2 / |B - A| (complex notation, z = x + i y). The branch cut of the log of
    the ratio lies on the segment itself, where alpha is physically discontinuous.

    Args:
        theta_E_total: Einstein radius of the whole line's mass as one point mass [arcsec]
            (mass ~ theta_E_total^2).
        x_a, y_a, x_b, y_b: end points [arcsec]; must differ.
    """
    dx, dy = x_b - x_a, y_b - y_a
    px, py = x - x_a, y - y_a
    qx, qy = x - x_b, y - y_b
    p2 = px * px + py * py + 1e-12
    q2 = qx * qx + qy * qy + 1e-12
    log_ratio = 0.5 * torch.log(p2 / q2)  # log|(z-A)/(z-B)|
    # arg((z-A)/(z-B)) = arg((z-A) * conj(z-B))
    angle = stable_atan2(py * qx - px * qy, px * qx + py * qy)
    scale = theta_E_total * theta_E_total / (dx * dx + dy * dy)
    return scale * (dx * log_ratio + dy * angle), scale * (dy * log_ratio - dx * angle)


def sersic_b_n(n_sersic):
    """lenstronomy's b(n) = 1.9992 n - 0.3271 (Capaccioli 1989 approximation)."""
    return 1.9992 * n_sersic - 0.3271


def sersic(x, y, amp, R_sersic, n_sersic, e1, e2, center_x, center_y):
    """Elliptical Sersic surface brightness, lenstronomy ``SERSIC_ELLIPSE`` convention.

    I = amp * exp(-b_n [(R / R_sersic)^(1/n) - 1]), R the product-average elliptical radius
    (sqrt(a b)); ``amp`` is the intensity at R_sersic.

    Args:
        amp: intensity at the half-light radius [arbitrary flux / pixel].
        R_sersic: half-light radius [arcsec].
        n_sersic: Sersic index.
        e1, e2: lenstronomy ellipticity components.
        center_x, center_y: centre [arcsec].
    """
    dx, dy = x - center_x, y - center_y
    norm = torch.sqrt(torch.clamp(torch.abs(1.0 - e1 * e1 - e2 * e2), min=1e-6))
    xe = ((1.0 - e1) * dx - e2 * dy) / norm
    ye = (-e2 * dx + (1.0 + e1) * dy) / norm
    r = torch.clamp(torch.sqrt(xe * xe + ye * ye), min=1e-4)  # lenstronomy's smoothing
    # (r/R)^(1/n) as exp(log(.)/n): pow differs between vectorised and scalar CPU paths
    reduced = torch.exp(torch.log(r / R_sersic) / n_sersic)
    return amp * torch.exp(-sersic_b_n(n_sersic) * (reduced - 1.0))


def gaussian_kernel_1d(sigma_pix: float, size: int, dtype=torch.float32, device=None) -> Tensor:
    """Normalised 1-D Gaussian taps, sampled at pixel centres (2-D kernel = outer product)."""
    half = (size - 1) / 2.0
    t = torch.arange(size, dtype=torch.float64) - half
    g = torch.exp(-0.5 * (t / sigma_pix) ** 2)
    return (g / g.sum()).to(dtype=dtype, device=device)


def psf_taps(config, dtype=torch.float32, device=None) -> Tensor:
    """A ``SimConfig``'s Gaussian PSF as 1-D taps in pixels (the 2-D kernel is their outer
    product): what every renderer of the config convolves with."""
    return gaussian_kernel_1d(fwhm_to_sigma(config.psf_fwhm) / config.pixel_scale,
                              config.psf_size, dtype=dtype, device=device)


def pixel_centres(config) -> Tensor:
    """A ``SimConfig``'s pixel-centre coordinates along one axis [arcsec], float64, (n,):
    symmetric about the optical axis."""
    n = config.image_size
    return (torch.arange(n, dtype=torch.float64) - (n - 1) / 2.0) * config.pixel_scale


def convolve_separable(images: Tensor, taps: Tensor) -> Tensor:
    """'Same'-size convolution with a symmetric separable kernel, zero padding.

    A sum of shifted slices in fixed order rather than conv2d: conv2d picks algorithms by batch
    size (cuDNN, oneDNN), which would make pixel bits depend on the batch.

    Args:
        images: (B, H, W).
        taps: (K,) odd-length 1-D kernel.
    """
    k = taps.shape[0]
    half = k // 2
    h, w = images.shape[-2:]
    padded = torch.nn.functional.pad(images, (half, half))
    rows = taps[0] * padded[..., :, 0:w]
    for i in range(1, k):
        rows = rows + taps[i] * padded[..., :, i : i + w]
    padded = torch.nn.functional.pad(rows, (0, 0, half, half))
    out = taps[0] * padded[..., 0:h, :]
    for i in range(1, k):
        out = out + taps[i] * padded[..., i : i + h, :]
    return out


def fwhm_to_sigma(fwhm: float) -> float:
    """Gaussian FWHM -> sigma."""
    return fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
