"""The device side of the input pipeline: normalisation of uint8 batches."""
import numpy as np
import torch

from trainer.loop import normalize


def test_normalize_matches_numpy_on_a_uint8_nchw_batch():
    x = np.random.default_rng(1).integers(0, 256, (4, 3, 5, 6), dtype=np.uint8)
    mean, std = (125.3, 123.0, 113.9), (63.0, 62.1, 66.7)
    got = normalize(torch.from_numpy(x), mean, std)
    want = (x.astype(np.float64) - np.array(mean)[None, :, None, None]) / np.array(std)[None, :, None, None]
    assert got.dtype == torch.float32 and got.device == torch.device("cpu")
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-5)
