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


# Known-answer normals, computed independently of dift_fast: Philox4x32-10 re-implemented in pure Python integers
# (Random123's round function and key schedule), checked against the three KAT vectors above; then the spec's
# uniform map u = ((a >> 8) + 0.5) * 2**-24 and Box-Muller r = sqrt(-2 ln uA), theta = 2 pi uB with Python's `math`
# in float64, each normal rounded once to float32 with `struct.pack("<f", ...)`. Printed with repr (exact float32).
KAT_NORMALS = [
    [0.991137683391571, -0.9246626496315002, -0.6176090240478516, -0.4820685088634491],
    [-0.07258106768131256, 1.658288836479187, -0.8576778769493103, 0.4230636954307556],
    [-0.5514678955078125, -0.31224900484085083, 0.9654671549797058, 1.1806734800338745],
]
# ensemble_normals(key=0x0123456789ABCDEF, seed=42, E=2, numel=8, stream=1), derived the same way through the
# spec's counter layout (c0 = j, c1 = e, c2 = stream, c3 = key low word; k0 = seed low, k1 = seed high + key high).
ENSEMBLE_NORMALS = [
    [1.4043545722961426, -1.6135188341140747, -0.32081860303878784, 2.317824602127075,
     -0.054469235241413116, 0.8927276134490967, -1.1478917598724365, -0.8359773755073547],
    [-0.6270430684089661, -1.5681540966033936, 1.3725537061691284, -1.1392724514007568,
     -0.19977575540542603, -0.9186326861381531, -0.21943040192127228, 1.4287869930267334],
]


def test_box_muller_known_answers():
    words = np.array([expected for _, _, expected in KAT], np.uint32)
    got = noise.box_muller(words)
    assert got.dtype == np.float32
    # numpy's and the C library's log/cos/sin may differ in the last float64 bit; rounded once to float32 that is
    # at most 1 ulp (the spec allows 4 between implementations). Observed: bit-identical.
    np.testing.assert_array_max_ulp(got, np.array(KAT_NORMALS, np.float32), maxulp=1)


def test_ensemble_normals_known_answers():
    got = noise.ensemble_normals(0x0123456789ABCDEF, 42, 2, 8, noise.DIFFUSION_STREAM)
    np.testing.assert_array_max_ulp(got, np.array(ENSEMBLE_NORMALS, np.float32), maxulp=1)


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
