// nanobind module dift_fast._C: build information (kernels are added beside it).
#include <nanobind/nanobind.h>

namespace nb = nanobind;

NB_MODULE(_C, m) {
  m.doc() = "dift-fast native kernels";
#ifdef DIFT_FAST_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.attr("cuda_build_reason") = DIFT_FAST_CUDA_REASON;
}
