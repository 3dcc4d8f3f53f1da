"""APLe's Gaussian-filter image adapter."""
import numpy as np
import jax.numpy as jnp
import pytest

from aple_jax.adapter import AdapterConfig, apply_adapter, gaussian_transfer, low_pass


def test_dc_is_preserved():
    rng = np.random.default_rng(0)
    img = jnp.asarray(rng.normal(size=(2, 32, 48, 3)), jnp.float32)
    out = apply_adapter(img, AdapterConfig())
    np.testing.assert_allclose(out.mean(axis=(1, 2)), img.mean(axis=(1, 2)), atol=1e-5)
    np.testing.assert_allclose(low_pass(jnp.full((16, 16, 3), 0.7), AdapterConfig()), 0.7, atol=1e-6)


def test_alpha_one_is_identity():
    img = jnp.asarray(np.random.default_rng(1).normal(size=(3, 16, 16, 3)), jnp.float32)
    np.testing.assert_array_equal(apply_adapter(img, AdapterConfig(alpha=1.0)), img)


def test_low_pass_response_on_sinusoids():
    """A sinusoid of frequency f (cycles/pixel) is scaled by exactly exp(-f^2 / (2 sigma^2))."""
    size, sigma = 64, 0.05
    cfg = AdapterConfig(sigma=sigma, alpha=0.0)
    x = np.arange(size)
    for cycles in (1, 4, 8, 16):
        f = cycles / size
        wave = np.cos(2 * np.pi * f * x)[None, :, None] * np.ones((size, 1, 3))
        out = np.asarray(apply_adapter(jnp.asarray(wave, jnp.float32), cfg))
        gain = np.exp(-f ** 2 / (2 * sigma ** 2))
        np.testing.assert_allclose(out, gain * wave, atol=1e-5)
    # the fused output keeps alpha of the original plus (1 - alpha) of the filtered wave
    f = 8 / size
    wave = np.cos(2 * np.pi * f * x)[None, :, None] * np.ones((size, 1, 3))
    fused = np.asarray(apply_adapter(jnp.asarray(wave, jnp.float32), AdapterConfig(sigma=sigma, alpha=0.9)))
    np.testing.assert_allclose(fused, (0.9 + 0.1 * np.exp(-f ** 2 / (2 * sigma ** 2))) * wave, atol=1e-5)


def test_index_units_pass_only_dc():
    img = jnp.asarray(np.random.default_rng(2).normal(size=(16, 16, 3)), jnp.float32)
    out = low_pass(img, AdapterConfig(freq_units="index"))
    np.testing.assert_allclose(out, jnp.broadcast_to(img.mean(axis=(0, 1)), img.shape), atol=1e-5)


def test_prefactor_scales_the_transfer_function():
    peak = gaussian_transfer(8, 8, AdapterConfig())
    literal = gaussian_transfer(8, 8, AdapterConfig(kernel_norm="prefactor"))
    assert float(peak[0, 0]) == 1.0
    np.testing.assert_allclose(literal, peak / (2 * np.pi * 0.05 ** 2), rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_shape_and_dtype_on_batches(dtype):
    img = jnp.ones((4, 2, 24, 24, 3), dtype)
    out = apply_adapter(img, AdapterConfig())
    assert out.shape == img.shape and out.dtype == dtype


@pytest.mark.parametrize("kwargs", [dict(sigma=0.0), dict(alpha=1.5), dict(freq_units="pixels"),
                                    dict(kernel_norm="sum")])
def test_bad_switches_name_the_value(kwargs):
    key = next(iter(kwargs))
    with pytest.raises(ValueError, match=key):
        AdapterConfig(**kwargs)
