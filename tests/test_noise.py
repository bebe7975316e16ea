"""The numpy reference of the noise contract (spec §3): known answers and the counter/key layout."""

from __future__ import annotations

import numpy as np
import pytest

from dift_fast import noise

# Philox4x32-10 known-answer vectors from spec §3 (Random123's kat_vectors): counter, key -> words.
KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize(("counter", "key", "expected"), KAT)
def test_philox_known_answers(counter, key, expected):
    out = noise.philox4x32_10(np.array([counter], np.uint32), np.array(key, np.uint32))
    assert out.tolist() == [list(expected)]


def test_uniforms_and_normals_at_the_ends():
    words = np.array([0, 0xFF, 0x100, 0x7FFFFFFF, 0xFFFFFEFF, 0xFFFFFF00, 0xFFFFFFFF], np.uint32)
    u = noise.uniforms_from_words(words)
    assert u.dtype == np.float64 and (u > 0).all() and (u < 1).all()  # strictly inside (0, 1)
    assert u[0] == 2.0**-25 and u[0] == u[1]  # the low 8 bits are dropped
    assert u[-1] == 1 - 2.0**-25 and u[-1] == u[-2]  # exact: float32 would have rounded these to 1.0
    n = noise.box_muller(np.array([[0xFFFFFFFF, 0, 0, 0xFFFFFFFF]], np.uint32))
    assert np.isfinite(n).all() and n[0, 0] != 0


def test_ensemble_normals_follow_the_counter_layout():
    key, seed = 0x0123456789ABCDEF, 0xFEDCBA9876543210
    e, numel = 2, 10
    got = noise.ensemble_normals(key, seed, e + 1, numel, noise.DIFFUSION_STREAM)[e]
    groups = np.arange(3, dtype=np.uint32)
    counters = np.stack([groups, np.full(3, e), np.full(3, 1), np.full(3, key & 0xFFFFFFFF)], 1).astype(np.uint32)
    k = np.array([seed & 0xFFFFFFFF, ((seed >> 32) + (key >> 32)) & 0xFFFFFFFF], np.uint32)
    np.testing.assert_array_equal(got, noise.box_muller(noise.philox4x32_10(counters, k)).ravel()[:numel])
    # the key's high word is folded into k1, not into the counter
    assert np.array_equal(noise.philox_key(seed, key), k)
