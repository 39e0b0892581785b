// How errors cross the binding: the core's typed errors (fastmem/errors.hpp) become fastmem's
// Python exceptions, and a run that Ctrl-C stopped raises the signal handler's exception.
#pragma once
#include <pybind11/pybind11.h>

#include <fastmem/errors.hpp>
#include <fastmem/interrupt.hpp>
#include <fastmem/params.hpp>

namespace fastmem::binding {

namespace py = pybind11;

// InvalidArgument (FASTMEM_CHECK_ARG, with its file:line) -> fastmem.InvalidArgumentError, and
// CudaError (FASTMEM_CUDA_CHECK) -> fastmem.CudaError carrying the CUDA status. Each module
// registers them once, at its init.
inline void register_error_translators() {
  static py::handle invalid_argument =
      py::object(py::module_::import("fastmem.errors").attr("InvalidArgumentError")).release();
  static py::handle cuda_error = py::object(py::module_::import("fastmem.errors").attr("CudaError")).release();
  py::register_exception_translator([](std::exception_ptr e) {
    try {
      if (e) std::rethrow_exception(e);
    } catch (const CudaError& err) {
      py::object exc = py::reinterpret_borrow<py::object>(cuda_error)(err.what(), err.status());
      PyErr_SetObject(cuda_error.ptr(), exc.ptr());
    } catch (const std::invalid_argument& err) {
      PyErr_SetString(invalid_argument.ptr(), err.what());
    }
  });
}

// The StopProbe of the training loops (interrupt.hpp): the GIL for a moment, and Python's
// pending signals handled; a handler that raised (Ctrl-C: KeyboardInterrupt) stops the
// run, its exception left set for interruptible() to raise.
inline bool python_signal_pending(void*) {
  py::gil_scoped_acquire gil;
  return PyErr_CheckSignals() != 0;
}

// Runs a training loop without the GIL, Ctrl-C polled between steps. An interrupted run
// raises the exception of the signal handler, carrying (steps done, records written, and
// `more()`'s values: the dual run's scale c) as `fastmem_progress` so that the caller can keep
// what the run recorded and resume from where it stopped.
inline py::tuple no_more() { return py::tuple(); }

template <class F, class More = py::tuple (*)()>
TrainResult interruptible(F&& run, More&& more = no_more) {
  TrainResult res;
  {
    py::gil_scoped_release nogil;
    ScopedStopProbe probe({&python_signal_pending, nullptr});
    res = run();
  }
  if (res.status == Status::Interrupted) {
    py::error_already_set err;  // fetches (and clears) what the handler raised
    try {
      err.value().attr("fastmem_progress") = py::make_tuple(res.steps_done, res.records) + more();
    } catch (py::error_already_set&) {  // an exception object without attributes: raise it as it is
    }
    throw err;
  }
  return res;
}

}  // namespace fastmem::binding
