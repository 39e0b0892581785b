// Stopping a long run from outside: the training loops poll a probe between steps, at
// most every kPollInterval by the clock. An embedder installs the probe for the calling
// thread (the Python module: PyErr_CheckSignals with the GIL taken for a moment, so that
// Ctrl-C stops fm.train); the core itself knows nothing of signals or Python.
#pragma once
#include <atomic>
#include <chrono>
#include <thread>

namespace fastmem {

struct StopProbe {
  bool (*fn)(void*) = nullptr;  // true: stop the run
  void* ctx = nullptr;
};

inline StopProbe& installed_probe() {
  thread_local StopProbe probe;
  return probe;
}

// Installs a probe for the calling thread while in scope (nested scopes restore the outer one).
class ScopedStopProbe {
 public:
  explicit ScopedStopProbe(StopProbe p) : saved_(installed_probe()) { installed_probe() = p; }
  ~ScopedStopProbe() { installed_probe() = saved_; }
  ScopedStopProbe(const ScopedStopProbe&) = delete;
  ScopedStopProbe& operator=(const ScopedStopProbe&) = delete;

 private:
  StopProbe saved_;
};

// One per run, made on the calling thread. stop() is cheap (a countdown, then the clock):
// the probe runs on the thread that made the poller, at most every kPollInterval; other
// threads (OpenMP workers of train_many) see the answer through an atomic flag.
class StopPoller {
 public:
  static constexpr std::chrono::milliseconds kPollInterval{50};

  StopPoller()
      : probe_(installed_probe()), owner_(std::this_thread::get_id()),
        next_(std::chrono::steady_clock::now() + kPollInterval) {}

  bool stop() {
    if (!probe_.fn) return false;
    if (std::this_thread::get_id() != owner_) return stopped_.load(std::memory_order_relaxed);
    if (stopped_.load(std::memory_order_relaxed)) return true;
    if (--countdown_ > 0) return false;
    countdown_ = 8;
    const auto now = std::chrono::steady_clock::now();
    if (now < next_) return false;
    next_ = now + kPollInterval;
    if (probe_.fn(probe_.ctx)) stopped_.store(true, std::memory_order_relaxed);
    return stopped_.load(std::memory_order_relaxed);
  }

 private:
  StopProbe probe_;
  std::thread::id owner_;
  std::chrono::steady_clock::time_point next_;
  int countdown_ = 1;
  std::atomic<bool> stopped_{false};
};

}  // namespace fastmem
