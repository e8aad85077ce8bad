"""Map quantization: what a report measures is what the Zarr holds, to half a level."""

import numpy as np

from anodet_core.store.maps import dequantize, quantize


def test_uint8_quantization_rounds_to_the_nearest_level_and_clips():
    x = np.array([0.0, 0.49 / 255, 0.51 / 255, 127.5 / 255 - 1e-4, 127.5 / 255 + 1e-4, 1.0, 1.2, -0.1], np.float32)
    assert quantize(x, "uint8").tolist() == [0, 0, 1, 127, 128, 255, 255, 0]


def test_round_trip_error_is_at_most_half_a_level():
    x = np.random.default_rng(0).random(10_000).astype(np.float32)
    assert np.abs(dequantize(quantize(x, "uint8")) - x).max() <= 0.5 / 255 + 1e-7
    f16 = dequantize(quantize(x, "float16"))
    assert f16.dtype == np.float32 and np.abs(f16 - x).max() <= 2**-11
