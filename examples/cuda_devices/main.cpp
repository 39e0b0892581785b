// Prints the number of CUDA devices fastmem's kernels can run on, and why none where none can.
#include <cstdio>
#include <fastmem/cuda/launchers.hpp>
#include <string>

int main() {
  std::string why;
  const int n = fastmem::cuda::device_count(why);
  std::printf("%d\n%s\n", n, n > 0 ? "" : why.c_str());
  return 0;
}
