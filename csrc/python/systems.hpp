// The systems' binding functions: each bind_<system>.cpp registers its own when the module loads
// (FASTMEM_BIND_SYSTEM), and the module's init calls them all, so that a new system adds its
// binding file and touches no list here or in module.cpp.
#pragma once
#include <pybind11/pybind11.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

namespace fastmem::binding {

using Binder = void (*)(pybind11::module_&);

// {system, its binding function}, in one list per module (an inline function's static, so one
// for every translation unit of the module).
inline std::vector<std::pair<std::string, Binder>>& system_binders() {
  static std::vector<std::pair<std::string, Binder>> binders;
  return binders;
}

struct SystemBinding {
  SystemBinding(const char* system, Binder bind) { system_binders().emplace_back(system, bind); }
};

// Defines every registered system's functions in m, in the order of their names.
inline void bind_systems(pybind11::module_& m) {
  auto binders = system_binders();
  std::sort(binders.begin(), binders.end());
  for (const auto& [system, bind] : binders) bind(m);
}

}  // namespace fastmem::binding

// In a bind_<system>.cpp: FASTMEM_BIND_SYSTEM(memory, bind_memory) registers bind_memory(m).
#define FASTMEM_BIND_SYSTEM(system, fn) \
  static const ::fastmem::binding::SystemBinding fastmem_bind_##system(#system, &fn)
