// Plain parameter structs shared by the kernels, the optimizers and the driver.
#pragma once
#include <cmath>
#include <cstdint>

#include "views.hpp"

namespace fastmem {

enum class OptimizerKind : int { SGD = 0, Adam = 1, Sign = 2 };
enum class ScheduleKind : int { Constant = 0, Cosine = 1, Step = 2 };
// Interrupted: the installed StopProbe (interrupt.hpp) asked the run to stop.
enum class Status : int { Ok = 0, Diverged = 1, Interrupted = 2 };

// What a training run returns: how it ended, the steps it took and the records it wrote.
struct TrainResult {
  Status status = Status::Ok;
  index_t steps_done = 0;
  index_t records = 0;
};

// The defaults of every struct here are those of its Python spec in fastmem/specs.py
// (tests/test_specs.py compares them).

struct OptimizerParams {
  OptimizerKind kind = OptimizerKind::SGD;
  double lr = 1.0;
  double momentum = 0.0;      // SGD: buf = momentum * buf + g
  double weight_decay = 0.0;  // decoupled: W *= 1 - lr_t * weight_decay
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  // Adam
  ScheduleKind schedule = ScheduleKind::Constant;
  index_t schedule_steps = 0;  // cosine: period; step: decay every schedule_steps
  double gamma = 0.1;          // step: factor per decay
  double min_lr = 0.0;         // cosine: floor

  // An update that is zero wherever the gradient is zero and keeps no state
  // lets one-hot embeddings touch only the sampled rows of W.
  bool is_plain_sgd() const { return kind == OptimizerKind::SGD && momentum == 0.0 && weight_decay == 0.0; }
  // Adam with betas (0, 0): m = g, v = g^2 and no bias correction, the stateless update
  // g / (|g| + eps)
  bool is_normalized_adam() const { return kind == OptimizerKind::Adam && beta1 == 0.0 && beta2 == 0.0; }
};

// Learning rate at global step t (0-based).
inline double lr_at(const OptimizerParams& o, index_t t) {
  switch (o.schedule) {
    case ScheduleKind::Cosine: {
      const double T = static_cast<double>(o.schedule_steps);
      const double frac = T > 0 ? std::fmin(static_cast<double>(t) / T, 1.0) : 0.0;
      return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1.0 + std::cos(M_PI * frac));
    }
    case ScheduleKind::Step:
      return o.lr * std::pow(o.gamma, static_cast<double>(o.schedule_steps > 0 ? t / o.schedule_steps : 0));
    case ScheduleKind::Constant:
    default:
      return o.lr;
  }
}

struct TrainParams {
  index_t steps = 0;
  index_t batch_size = 0;  // 0: full-batch GD on the population loss
  std::uint64_t seed = 0;
  index_t start_step = 0;  // global step of the first update (resuming)
  bool layernorm = false;
  index_t chunk = 0;       // output tokens per softmax chunk; 0 picks one
  index_t power_iters = 100;  // power iterations of a recorded sharpness
};

// Many independent full-batch GD runs of one shape (train_many.hpp, csrc/cuda/train_many.cu).
template <class T>
struct TrainManyParams {
  const T* E;                 // R x N x d, contiguous
  const T* U;                 // R x M x d
  T* W;                       // R x d x d, trained in place
  const double* p;            // R x N token probabilities
  const std::int64_t* y;      // R x N targets in [0, M)
  const double* lr;           // R learning rates
  index_t R = 0, N = 0, M = 0, d = 0, steps = 0;
  T* loss;                    // R, out: population loss at the last W
  T* accuracy;                // R, out
  std::int8_t* status;        // R, out: 0 finished, 1 diverged (W kept from before the non-finite loss)
};

}  // namespace fastmem
