// The constants every backend shares. fastmem/specs.py holds the same values for the numba
// and numpy backends; the module exports these (constants()) and a test compares them.
#pragma once

namespace fastmem {

constexpr double kLayerNormEps = 1e-6;  // LayerNorm of a read-out: h / sqrt(|h|^2 + eps)
constexpr double kSharpnessTol = 1e-6;  // relative tolerance of the power iteration of recorded sharpness

}  // namespace fastmem
