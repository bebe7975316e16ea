// nanobind module dift_fast._C: the ensemble kernels for CPU and CUDA tensors (through DLPack) and build info.
//
// The entries check everything they are given (device, dtype, shape, contiguity) and raise TypeError/ValueError
// with the actual shapes; the Python wrappers in dift_fast/ops.py allocate the outputs. CUDA entries launch on
// the stream passed as an integer (torch.cuda.current_stream().cuda_stream).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <optional>
#include <stdexcept>
#include <string>

#include "ensemble.h"

namespace nb = nanobind;
using Array = nb::ndarray<>;

namespace {

enum class Where { Cpu, Cuda };

std::string dtype_name(const Array& a) {
  const auto d = a.dtype();
  std::string kind;
  switch (d.code) {
    case uint8_t(nb::dlpack::dtype_code::Int): kind = "int"; break;
    case uint8_t(nb::dlpack::dtype_code::UInt): kind = "uint"; break;
    case uint8_t(nb::dlpack::dtype_code::Float): kind = "float"; break;
    case uint8_t(nb::dlpack::dtype_code::Bfloat): kind = "bfloat"; break;
    case uint8_t(nb::dlpack::dtype_code::Bool): kind = "bool"; break;
    default: kind = "dtype" + std::to_string(d.code) + "_";
  }
  return kind + std::to_string(d.bits);
}

std::string describe(const Array& a) {
  std::string s = "[";
  for (size_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  s += "] " + dtype_name(a);
  s += a.device_type() == nb::device::cuda::value ? " on cuda:" + std::to_string(a.device_id())
       : a.device_type() == nb::device::cpu::value ? std::string(" on cpu")
                                                   : " on DLPack device " + std::to_string(a.device_type());
  return s;
}

[[noreturn]] void fail_value(const std::string& msg) { throw nb::value_error(msg.c_str()); }
[[noreturn]] void fail_type(const std::string& msg) { throw nb::type_error(msg.c_str()); }

// Device and contiguity of one argument; returns its device id.
int check_tensor(const Array& a, const char* name, Where where) {
  const bool on_cpu = a.device_type() == nb::device::cpu::value;
  const bool on_cuda = a.device_type() == nb::device::cuda::value;
  if (where == Where::Cpu && !on_cpu) fail_value(std::string(name) + " must be a CPU tensor, got " + describe(a));
  if (where == Where::Cuda && !on_cuda) fail_value(std::string(name) + " must be a CUDA tensor, got " + describe(a));
  int64_t expected = 1;
  for (size_t i = a.ndim(); i-- > 0;) {
    if (a.shape(i) != 1 && a.stride(i) != expected) {
      fail_value(std::string(name) + " must be contiguous, got " + describe(a) + " with non-contiguous strides");
    }
    expected *= a.shape(i);
  }
  return on_cuda ? int(a.device_id()) : -1;
}

std::optional<dift::DType> float_dtype(const Array& a) {
  const auto d = a.dtype();
  if (d.lanes != 1) return std::nullopt;
  if (d.code == uint8_t(nb::dlpack::dtype_code::Float) && d.bits == 32) return dift::DType::F32;
  if (d.code == uint8_t(nb::dlpack::dtype_code::Float) && d.bits == 16) return dift::DType::F16;
  if (d.code == uint8_t(nb::dlpack::dtype_code::Bfloat) && d.bits == 16) return dift::DType::BF16;
  return std::nullopt;
}

dift::DType require_float(const Array& a, const char* name) {
  auto d = float_dtype(a);
  if (!d) fail_type(std::string(name) + " must be float32, float16 or bfloat16, got " + describe(a));
  return *d;
}

void require_dtype(const Array& a, const char* name, nb::dlpack::dtype_code code, int bits, const char* what) {
  const auto d = a.dtype();
  if (d.code != uint8_t(code) || d.bits != bits || d.lanes != 1) {
    fail_type(std::string(name) + " must be " + what + ", got " + describe(a));
  }
}

void require_shape(const Array& a, const char* name, std::initializer_list<int64_t> shape) {
  bool ok = a.ndim() == shape.size();
  size_t i = 0;
  for (int64_t s : shape) ok = ok && int64_t(a.shape(i++)) == s;
  if (!ok) {
    std::string want = "[";
    i = 0;
    for (int64_t s : shape) want += (i++ ? ", " : "") + std::to_string(s);
    fail_value(std::string(name) + " must have shape " + want + "], got " + describe(a));
  }
}

int same_device(Where where, std::initializer_list<std::pair<const Array*, const char*>> args) {
  int device = -2;
  for (auto& [a, name] : args) {
    const int d = check_tensor(*a, name, where);
    if (device != -2 && d != device) fail_value(std::string("all tensors must be on one device; ") + name + " is " +
                                                describe(*a));
    device = d;
  }
  return device;
}

void require_cuda_build() {
#ifndef DIFT_FAST_WITH_CUDA
  throw std::runtime_error("dift_fast._C was built without CUDA kernels: " DIFT_FAST_CUDA_REASON);
#endif
}

void raise_launch(const char* err, const char* op) {
  if (err) throw std::runtime_error(std::string(op) + " CUDA launch failed: " + err);
}

void latents_entry(Where where, const Array& mean, const Array& stdv, const Array& keys, const Array& out,
                   uint64_t seed, int32_t ensemble, double sqrt_alpha, double sqrt_one_minus_alpha, double scaling,
                   int num_threads, uintptr_t stream) {
  if (where == Where::Cuda) require_cuda_build();
  const int device = same_device(where, {{&mean, "mean"}, {&stdv, "std"}, {&keys, "keys"}, {&out, "out"}});
  const dift::DType in_dtype = require_float(mean, "mean");
  if (float_dtype(stdv) != in_dtype) fail_type("std must have the dtype of mean, got " + describe(stdv));
  const dift::DType out_dtype = require_float(out, "out");
  if (mean.ndim() != 4) fail_value("mean must be [B, C, h, w], got " + describe(mean));
  if (ensemble < 1) fail_value("ensemble_size must be >= 1, got " + std::to_string(ensemble));
  const int64_t B = mean.shape(0), C = mean.shape(1), H = mean.shape(2), W = mean.shape(3);
  require_shape(stdv, "std", {B, C, H, W});
  if (keys.dtype().bits != 64 || (keys.dtype().code != uint8_t(nb::dlpack::dtype_code::Int) &&
                                  keys.dtype().code != uint8_t(nb::dlpack::dtype_code::UInt))) {
    fail_type("keys must be int64 or uint64, got " + describe(keys));
  }
  require_shape(keys, "keys", {B});
  require_shape(out, "out", {B * ensemble, C, H, W});
  const int64_t numel = C * H * W;
  if ((numel + 3) / 4 > int64_t(UINT32_MAX)) fail_value("latent too large for the counter layout: " + describe(mean));
  const dift::LatentsArgs args{mean.data(), stdv.data(), static_cast<const uint64_t*>(keys.data()), out.data(),
                               in_dtype, out_dtype, B, numel, ensemble, seed, float(sqrt_alpha),
                               float(sqrt_one_minus_alpha), float(scaling)};
  nb::gil_scoped_release release;
  if (where == Where::Cpu) {
    dift::ensemble_latents_cpu(args, num_threads);
  } else {
#ifdef DIFT_FAST_WITH_CUDA
    raise_launch(dift::ensemble_latents_cuda(args, device, reinterpret_cast<void*>(stream)), "ensemble_latents");
#endif
  }
  (void)device, (void)stream;
}

void reduce_entry(Where where, const Array& feats, const Array& mean, const std::optional<Array>& normalized,
                  int32_t ensemble, int num_threads, uintptr_t stream) {
  if (where == Where::Cuda) require_cuda_build();
  const int device = normalized ? same_device(where, {{&feats, "feats"}, {&mean, "mean"}, {&*normalized, "normalized"}})
                                : same_device(where, {{&feats, "feats"}, {&mean, "mean"}});
  const dift::DType dtype = require_float(feats, "feats");
  if (feats.ndim() != 4) fail_value("feats must be [B*E, C, h, w], got " + describe(feats));
  if (ensemble < 1) fail_value("ensemble_size must be >= 1, got " + std::to_string(ensemble));
  const int64_t N = feats.shape(0), C = feats.shape(1), H = feats.shape(2), W = feats.shape(3);
  if (N % ensemble) {
    fail_value("feats has " + std::to_string(N) + " samples, not a multiple of ensemble_size=" +
               std::to_string(ensemble) + ": " + describe(feats));
  }
  const int64_t B = N / ensemble;
  require_dtype(mean, "mean", nb::dlpack::dtype_code::Float, 32, "float32");
  require_shape(mean, "mean", {B, C, H, W});
  if (normalized) {
    require_dtype(*normalized, "normalized", nb::dlpack::dtype_code::Float, 32, "float32");
    require_shape(*normalized, "normalized", {B, H, W, C});
  }
  const dift::ReduceArgs args{feats.data(), static_cast<float*>(mean.data()),
                              normalized ? static_cast<float*>(normalized->data()) : nullptr,
                              dtype, B, C, H * W, ensemble};
  nb::gil_scoped_release release;
  if (where == Where::Cpu) {
    dift::ensemble_reduce_cpu(args, num_threads);
  } else {
#ifdef DIFT_FAST_WITH_CUDA
    raise_launch(dift::ensemble_reduce_cuda(args, device, reinterpret_cast<void*>(stream)), "ensemble_reduce");
#endif
  }
  (void)device, (void)stream;
}

void philox_entry(Where where, const Array& counters, uint32_t k0, uint32_t k1, const Array& out, uintptr_t stream) {
  if (where == Where::Cuda) require_cuda_build();
  const int device = same_device(where, {{&counters, "counters"}, {&out, "out"}});
  require_dtype(counters, "counters", nb::dlpack::dtype_code::UInt, 32, "uint32");
  require_dtype(out, "out", nb::dlpack::dtype_code::UInt, 32, "uint32");
  if (counters.ndim() != 2 || counters.shape(1) != 4) fail_value("counters must be [N, 4], got " + describe(counters));
  const int64_t n = counters.shape(0);
  require_shape(out, "out", {n, 4});
  const auto* c = static_cast<const uint32_t*>(counters.data());
  auto* o = static_cast<uint32_t*>(out.data());
  nb::gil_scoped_release release;
  if (where == Where::Cpu) {
    dift::philox_cpu(c, n, k0, k1, o);
  } else {
#ifdef DIFT_FAST_WITH_CUDA
    raise_launch(dift::philox_cuda(c, n, k0, k1, o, device, reinterpret_cast<void*>(stream)), "philox");
#endif
  }
  (void)device, (void)stream;
}

void noise_entry(Where where, const Array& keys, const Array& out, uint64_t seed, uint32_t stream_id, int num_threads,
                 uintptr_t stream) {
  if (where == Where::Cuda) require_cuda_build();
  const int device = same_device(where, {{&keys, "keys"}, {&out, "out"}});
  if (keys.dtype().bits != 64 || (keys.dtype().code != uint8_t(nb::dlpack::dtype_code::Int) &&
                                  keys.dtype().code != uint8_t(nb::dlpack::dtype_code::UInt))) {
    fail_type("keys must be int64 or uint64, got " + describe(keys));
  }
  require_dtype(out, "out", nb::dlpack::dtype_code::Float, 32, "float32");
  if (keys.ndim() != 1 || out.ndim() != 3 || out.shape(0) != keys.shape(0) || out.shape(1) < 1) {
    fail_value("keys must be [B] and out [B, E, numel] with E >= 1, got " + describe(keys) + " and " + describe(out));
  }
  const int64_t B = out.shape(0), E = out.shape(1), numel = out.shape(2);
  if (E > INT32_MAX || (numel + 3) / 4 > int64_t(UINT32_MAX)) fail_value("out too large: " + describe(out));
  const auto* k = static_cast<const uint64_t*>(keys.data());
  auto* o = static_cast<float*>(out.data());
  nb::gil_scoped_release release;
  if (where == Where::Cpu) {
    dift::contract_noise_cpu(k, B, int32_t(E), numel, seed, stream_id, o, num_threads);
  } else {
#ifdef DIFT_FAST_WITH_CUDA
    raise_launch(dift::contract_noise_cuda(k, B, int32_t(E), numel, seed, stream_id, o, device,
                                           reinterpret_cast<void*>(stream)),
                 "contract_noise");
#endif
  }
  (void)device, (void)stream, (void)num_threads;
}

nb::dict cuda_probe(int device) {
  nb::dict d;
#ifdef DIFT_FAST_WITH_CUDA
  int count = 0, driver = 0, runtime = 0;
  const char* err = dift::cuda_probe(device, &count, &driver, &runtime);
  d["ok"] = err == nullptr;
  d["error"] = err ? std::string(err) : std::string();
  d["device_count"] = count;
  d["driver_version"] = driver;
  d["runtime_version"] = runtime;
#else
  (void)device;
  d["ok"] = false;
  d["error"] = std::string("built without CUDA kernels: " DIFT_FAST_CUDA_REASON);
  d["device_count"] = 0;
  d["driver_version"] = 0;
  d["runtime_version"] = 0;
#endif
  return d;
}

nb::dict build_info() {
  nb::dict d;
#ifdef DIFT_FAST_WITH_CUDA
  d["with_cuda"] = true;
#else
  d["with_cuda"] = false;
#endif
  d["variant"] = DIFT_FAST_VARIANT;
  d["cuda_build_reason"] = DIFT_FAST_CUDA_REASON;
  d["openmp"] = dift::openmp_enabled();
  d["cxx_compiler"] = DIFT_FAST_CXX_COMPILER;
  d["cxx_flags"] = DIFT_FAST_CXX_FLAGS;
  d["cuda_flags"] = DIFT_FAST_CUDA_FLAGS;
  d["cuda_archs"] = DIFT_FAST_CUDA_ARCHS;
  d["build_type"] = DIFT_FAST_BUILD_TYPE;
  return d;
}

}  // namespace

NB_MODULE(_C, m) {
  m.doc() = "dift-fast native kernels (CPU always, CUDA when built with a toolkit)";
#ifdef DIFT_FAST_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.attr("cuda_build_reason") = DIFT_FAST_CUDA_REASON;
  m.def("build_info", &build_info, "The build configuration: compilers, flags, CUDA archs, OpenMP.");
  m.def("cuda_probe", &cuda_probe, nb::arg("device") = 0,
        "Run a trivial kernel on `device`: {ok, error, device_count, driver_version, runtime_version}.");

  for (auto [where, suffix] : {std::pair{Where::Cpu, "_cpu"}, std::pair{Where::Cuda, "_cuda"}}) {
    const std::string sfx = suffix;
    m.def(("ensemble_latents" + sfx).c_str(),
          [where](const Array& mean, const Array& stdv, const Array& keys, const Array& out, uint64_t seed,
                  int32_t ensemble, double sa, double s1a, double scaling, int num_threads, uintptr_t stream) {
            latents_entry(where, mean, stdv, keys, out, seed, ensemble, sa, s1a, scaling, num_threads, stream);
          },
          nb::arg("mean"), nb::arg("std"), nb::arg("keys"), nb::arg("out"), nb::arg("seed"),
          nb::arg("ensemble_size"), nb::arg("sqrt_alpha"), nb::arg("sqrt_one_minus_alpha"),
          nb::arg("scaling_factor"), nb::arg("num_threads") = 0, nb::arg("stream") = 0,
          "x_t [B*E, C, h, w] (out, fp32/fp16/bf16) from mean, std [B, C, h, w] and image keys [B].");
    m.def(("ensemble_reduce" + sfx).c_str(),
          [where](const Array& feats, const Array& mean, const std::optional<Array>& normalized, int32_t ensemble,
                  int num_threads, uintptr_t stream) {
            reduce_entry(where, feats, mean, normalized, ensemble, num_threads, stream);
          },
          nb::arg("feats"), nb::arg("mean"), nb::arg("normalized").none(), nb::arg("ensemble_size"),
          nb::arg("num_threads") = 0, nb::arg("stream") = 0,
          "mean [B, C, h, w] fp32 of feats [B*E, C, h, w]; normalized [B, h, w, C] fp32 unless None.");
    m.def(("philox4x32_10" + sfx).c_str(),
          [where](const Array& counters, uint32_t k0, uint32_t k1, const Array& out, uintptr_t stream) {
            philox_entry(where, counters, k0, k1, out, stream);
          },
          nb::arg("counters"), nb::arg("k0"), nb::arg("k1"), nb::arg("out"), nb::arg("stream") = 0,
          "Philox4x32-10 words out [N, 4] uint32 of counters [N, 4] uint32.");
    m.def(("contract_noise" + sfx).c_str(),
          [where](const Array& keys, const Array& out, uint64_t seed, uint32_t stream_id, int num_threads,
                  uintptr_t stream) { noise_entry(where, keys, out, seed, stream_id, num_threads, stream); },
          nb::arg("keys"), nb::arg("out"), nb::arg("seed"), nb::arg("stream_id"), nb::arg("num_threads") = 0,
          nb::arg("stream") = 0, "The contract's normals out [B, E, numel] fp32 for image keys [B].");
  }
}
