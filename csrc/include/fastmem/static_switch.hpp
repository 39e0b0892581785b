// Runtime values to compile-time constants, in one place (flash-attention's static_switch.h,
// written as C++17 generic lambdas instead of macros): the body is compiled once per value and
// receives the value as a type, std::integral_constant or a dtype tag, so that a kernel's
// inner loops see a constant (sign descent or not, a fixed M held in registers, float or double).
#pragma once
#include <type_traits>

namespace fastmem {

// f(std::true_type{}) or f(std::false_type{}); read the flag as decltype(flag)::value.
template <class F>
decltype(auto) bool_switch(bool cond, F&& f) {
  if (cond) return f(std::true_type{});
  return f(std::false_type{});
}

// f(std::integral_constant<int, v>{}) for v one of Values, else f(std::integral_constant<int, 0>{})
// (the kernel's any-size path). f returns nothing.
template <int... Values, class F>
void int_switch(long long v, F&& f) {
  const bool fixed = ((v == Values ? (f(std::integral_constant<int, Values>{}), true) : false) || ...);
  if (!fixed) f(std::integral_constant<int, 0>{});
}

// The floating types the core is instantiated for; f(float{}) or f(double{}).
enum class Dtype { Float32, Float64 };

template <class F>
decltype(auto) dtype_switch(Dtype dtype, F&& f) {
  if (dtype == Dtype::Float32) return f(float{});
  return f(double{});
}

}  // namespace fastmem
