"""APLe's Gaussian-filter image adapter: a frequency-domain low-pass fused with the image.

`I_bar = alpha * I + (1 - alpha) * ifft2(H * fft2(I))`, per channel over the two spatial axes, with the Gaussian
transfer function `H(u, v) = exp(-(u^2 + v^2) / (2 sigma^2))`. The switches below resolve the ambiguities listed in
docs/aple.md (A1-A6): frequency units and the kernel's normalisation.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

FREQ_UNITS = ("normalized", "index")
KERNEL_NORMS = ("peak", "prefactor")


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
    """sigma, alpha from the one summary that states them; the rest are our documented defaults."""
    sigma: float = 0.05
    alpha: float = 0.9
    freq_units: str = "normalized"   # cycles/pixel in [-0.5, 0.5), or integer frequency index
    kernel_norm: str = "peak"        # H(0, 0) = 1, or the literal 1 / (2 pi sigma^2) prefactor

    def __post_init__(self) -> None:
        if self.freq_units not in FREQ_UNITS:
            raise ValueError(f"adapter.freq_units={self.freq_units!r}; expected one of {FREQ_UNITS}")
        if self.kernel_norm not in KERNEL_NORMS:
            raise ValueError(f"adapter.kernel_norm={self.kernel_norm!r}; expected one of {KERNEL_NORMS}")
        if self.sigma <= 0:
            raise ValueError(f"adapter.sigma must be > 0, got {self.sigma}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"adapter.alpha must lie in [0, 1], got {self.alpha}")


def gaussian_transfer(height: int, width: int, cfg: AdapterConfig) -> jax.Array:
    """The (height, width) Gaussian transfer function on FFT frequencies (unshifted layout)."""
    fy, fx = jnp.fft.fftfreq(height), jnp.fft.fftfreq(width)
    if cfg.freq_units == "index":
        fy, fx = fy * height, fx * width
    h = jnp.exp(-(fy[:, None] ** 2 + fx[None, :] ** 2) / (2 * cfg.sigma ** 2))
    if cfg.kernel_norm == "prefactor":
        h = h / (2 * math.pi * cfg.sigma ** 2)
    return h


def low_pass(images: jax.Array, cfg: AdapterConfig) -> jax.Array:
    """The Gaussian-filtered images; `images` is (..., H, W, C), filtered per channel."""
    h, w = images.shape[-3], images.shape[-2]
    spectrum = jnp.fft.fft2(images.astype(jnp.float32), axes=(-3, -2))
    return jnp.fft.ifft2(spectrum * gaussian_transfer(h, w, cfg)[:, :, None], axes=(-3, -2)).real


def apply_adapter(images: jax.Array, cfg: AdapterConfig) -> jax.Array:
    """The fused image `alpha * I + (1 - alpha) * low_pass(I)`, in the input's dtype."""
    fused = cfg.alpha * images.astype(jnp.float32) + (1 - cfg.alpha) * low_pass(images, cfg)
    return fused.astype(images.dtype)
