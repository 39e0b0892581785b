"""SplitMix64 on numpy uint64 arrays (rng.hpp's mix): the counter-based streams' hash for the
code that draws on the host in numpy (the reference backend, Scan and Snap's sampler and init)."""

import numpy as np


def splitmix64(z):
    z = np.asarray(z, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))
