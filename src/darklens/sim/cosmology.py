"""Flat LCDM distances and the mass <-> Einstein radius conversion for point masses."""

from __future__ import annotations

import math
from functools import lru_cache

from scipy.integrate import quad

_C_M_S = 299792458.0
_G_SI = 6.67430e-11
_MSUN_KG = 1.988409870698051e30
_MPC_M = 3.0856775814913673e22
_ARCSEC_PER_RAD = 180.0 / math.pi * 3600.0


@lru_cache(maxsize=32)
def angular_diameter_distances(z_lens: float, z_source: float, H0: float = 70.0,
                               Om0: float = 0.3) -> tuple[float, float, float]:
    """(D_d, D_s, D_ds) [Mpc] in a flat LCDM universe (no radiation).

    D_ds = (D_C(z_s) - D_C(z_d)) / (1 + z_s) holds for zero curvature (Hogg 1999, eq. 19).
    """
    hubble_distance = _C_M_S / 1000.0 / H0  # Mpc

    def comoving(z: float) -> float:
        inv_e = lambda zz: 1.0 / math.sqrt(Om0 * (1 + zz) ** 3 + (1 - Om0))  # noqa: E731
        return hubble_distance * quad(inv_e, 0.0, z, epsabs=0, epsrel=1e-10)[0]

    dc_d, dc_s = comoving(z_lens), comoving(z_source)
    return dc_d / (1 + z_lens), dc_s / (1 + z_source), (dc_s - dc_d) / (1 + z_source)


@lru_cache(maxsize=32)
def theta_E_squared_per_msun(z_lens: float, z_source: float, H0: float = 70.0,
                             Om0: float = 0.3) -> float:
    """K with theta_E^2 = K * M for a point mass M [Msun]: K = 4 G / c^2 * D_ds / (D_d D_s).

    Returns:
        K [arcsec^2 / Msun].
    """
    d_d, d_s, d_ds = angular_diameter_distances(z_lens, z_source, H0, Om0)
    k_rad2_per_kg = 4.0 * _G_SI / _C_M_S**2 * d_ds / (d_d * d_s * _MPC_M)
    return k_rad2_per_kg * _MSUN_KG * _ARCSEC_PER_RAD**2
