// Umbrella header of the header-only core.
#pragma once
#include "blas.hpp"
#include "errors.hpp"
#include "kernels/forward_backward.hpp"
#include "kernels/layernorm.hpp"
#include "kernels/metrics.hpp"
#include "kernels/sgd_rank_update.hpp"
#include "kernels/softmax_xent_grad.hpp"
#include "optim.hpp"
#include "params.hpp"
#include "rng.hpp"
#include "train.hpp"
#include "views.hpp"
