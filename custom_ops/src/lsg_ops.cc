// ONNX Runtime registration of the custom-op domain "ai.lsg" (version 1): two ops on one kernel,
// BlockSparseAttention (the block part of LSG attention, operands (n, h, rows, d)) and LSGAttention
// (the whole attention, global queries included, q/k/v in the projections' (n, G + T, h * d)
// layout), each with a float32 and a float16 CPU kernel and, built with LSG_OPS_CUDA,
// float32/float16/bfloat16 kernels for the CUDA execution provider (see custom_ops/README.md for
// the contracts). Entry point: RegisterCustomOps(OrtSessionOptions*, const OrtApiBase*), which is what
// SessionOptions.register_custom_ops_library() calls.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include "lsg_ops/block_sparse_attention.h"

#if defined(_WIN32)
#define LSG_EXPORT __declspec(dllexport)
#else
#define LSG_EXPORT __attribute__((visibility("default")))
#endif

namespace {

constexpr const char* kDomain = "ai.lsg";
constexpr const char* kOpName = "BlockSparseAttention";
constexpr const char* kLSGOpName = "LSGAttention";
// The C API version the library asks ONNX Runtime for (API version N ships in ONNX Runtime 1.N), not the
// headers' ORT_API_VERSION: the highest "End of Version" block of OrtApi (onnxruntime_c_api.cc) that holds a
// function called here or through the Ort:: wrappers used here, and of the OrtCustomOp fields set.
//   OrtApi: KernelContext_ParallelFor (17); KernelContext_GetGPUComputeStream (10); CreateStatus,
//   ReleaseStatus, GetErrorCode, GetErrorMessage, CreateCustomOpDomain, CustomOpDomain_Add,
//   AddCustomOpDomain, ReleaseCustomOpDomain, KernelInfoGetAttribute_int64/_float, KernelContext_GetInputCount,
//   KernelContext_GetInput, KernelContext_GetOutput, GetTensorTypeAndShape, GetDimensionsCount,
//   GetDimensions, GetTensorShapeElementCount, ReleaseTensorTypeAndShapeInfo, GetTensorMutableData (1).
//   Not Ort::ConstValue::GetTensorRawData: it calls GetTensorData (23).
//   OrtCustomOp: CreateKernelV2 / KernelComputeV2 (16), GetInputMemoryType (13), GetInputCharacteristic (8);
//   GetStartVersion / GetEndVersion (17) are the wrapper's defaults (opset 1 on).
// ONNX Runtime refuses a custom op whose `version` is above its own API version, and reads the OrtCustomOp
// fields by that version, so the ops carry this one too. scripts/test-ort-versions.sh checks it on the wheels.
constexpr uint32_t kOrtApiVersion = 17;
static_assert(kOrtApiVersion <= ORT_API_VERSION, "the headers are older than the C API version asked for");

// Slots of every input of both ops; LSGAttention has no global_k / global_v (its globals are the
// first rows of k and v), so its inputs fill slots q, k, v, key_mask, sparse_k, sparse_v, sparse_mask.
enum Input : size_t { kQ, kK, kV, kKeyMask, kGlobalK, kGlobalV, kSparseK, kSparseV, kSparseMask, kNumInputs };
const char* const kInputNames[kNumInputs] = {"q", "k", "v", "key_mask", "global_k", "global_v",
                                             "sparse_k", "sparse_v", "sparse_mask"};

enum class Op { kBlockSparse, kLSG };
constexpr size_t kLSGInputs = 7;
constexpr Input kLSGSlots[kLSGInputs] = {kQ, kK, kV, kKeyMask, kSparseK, kSparseV, kSparseMask};
constexpr size_t input_count(Op op) { return op == Op::kLSG ? kLSGInputs : kNumInputs; }
constexpr Input input_slot(Op op, size_t index) { return op == Op::kLSG ? kLSGSlots[index] : static_cast<Input>(index); }
constexpr const char* op_name(Op op) { return op == Op::kLSG ? kLSGOpName : kOpName; }

[[noreturn]] void fail(const std::string& message, Op op = Op::kBlockSparse) {
  throw std::invalid_argument(std::string(op_name(op)) + ": " + message);
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

struct Attributes {
  int64_t block_size = 0, sparse_block_size = 0, sparsity_factor = 1;
  float scale = 0.0f;
  int64_t num_heads = 0, num_global = 0;  // LSGAttention only
};

int64_t int_attribute(const OrtApi& api, const OrtKernelInfo* info, const char* name, int64_t fallback, bool required,
                      Op op) {
  int64_t value = 0;
  OrtStatus* status = api.KernelInfoGetAttribute_int64(info, name, &value);
  if (status == nullptr) return value;
  api.ReleaseStatus(status);
  if (required) fail(std::string("missing required attribute '") + name + "'", op);
  return fallback;
}

float float_attribute(const OrtApi& api, const OrtKernelInfo* info, const char* name, float fallback) {
  float value = 0.0f;
  OrtStatus* status = api.KernelInfoGetAttribute_float(info, name, &value);
  if (status == nullptr) return value;
  api.ReleaseStatus(status);
  return fallback;
}

void check_attributes(const Attributes& a, Op op = Op::kBlockSparse) {
  if (a.block_size < 1) fail("block_size must be >= 1", op);
  if (a.sparse_block_size < 0) fail("sparse_block_size must be >= 0", op);
  if (a.sparsity_factor < 1 || a.block_size % a.sparsity_factor)
    fail("sparsity_factor must be >= 1 and divide block_size", op);
  if (!(a.scale >= 0.0f) || std::isinf(a.scale)) fail("scale must be finite and >= 0 (0: 1/sqrt(head_dim))", op);
  if (op == Op::kLSG && a.num_heads < 1) fail("num_heads must be >= 1", op);
  if (op == Op::kLSG && a.num_global < 0) fail("num_global must be >= 0", op);
}

Attributes read_attributes(const OrtApi& api, const OrtKernelInfo* info, Op op) {
  Attributes a;
  a.block_size = int_attribute(api, info, "block_size", 0, true, op);
  a.sparse_block_size = int_attribute(api, info, "sparse_block_size", 0, false, op);
  a.sparsity_factor = int_attribute(api, info, "sparsity_factor", 1, false, op);
  a.scale = float_attribute(api, info, "scale", 0.0f);
  if (op == Op::kLSG) {
    a.num_heads = int_attribute(api, info, "num_heads", 0, true, op);
    a.num_global = int_attribute(api, info, "num_global", 0, true, op);
  }
  check_attributes(a, op);
  return a;
}

const void* tensor_data(const Ort::ConstValue& value) {
  void* data = nullptr;
  Ort::ThrowOnError(Ort::GetApi().GetTensorMutableData(const_cast<OrtValue*>(static_cast<const OrtValue*>(value)),
                                                       &data));
  return data;
}

struct InputView {
  std::vector<int64_t> shape;
  size_t count = 0;
  bool present = false;  // given and non-empty
  const void* data = nullptr;
};

// The kernel shape from the attributes and the input shapes: every check of the contract
// (custom_ops/README.md), shared by the CPU and CUDA kernels and the C entry of the CUDA kernel.
void expect_shape(const InputView (&in)[kNumInputs], size_t i, const std::vector<int64_t>& shape, Op op) {
  if (in[i].shape != shape)
    fail(std::string("input '") + kInputNames[i] + "' has shape " + shape_str(in[i].shape) + ", expected " +
         shape_str(shape), op);
}

// The compressed inputs (all three or none) and key_mask ((n, T) or (n, 1, T, 1)), against s.
void resolve_mask_and_sparse(lsg::BlockSparseShape& s, const InputView (&in)[kNumInputs], Op op) {
  auto expect = [&](size_t i, const std::vector<int64_t>& shape) { expect_shape(in, i, shape, op); };
  if (in[kKeyMask].shape == std::vector<int64_t>{s.batch, s.length}) {
    // (n, T) accepted as well as (n, 1, T, 1)
  } else {
    expect(kKeyMask, {s.batch, 1, s.length, 1});
  }
  const int present = in[kSparseK].present + in[kSparseV].present + in[kSparseMask].present;
  if (present != 0 && present != 3) fail("sparse_k, sparse_v and sparse_mask must be given all three or none", op);
  if (present == 3 && s.sparse_block_size > 0) {
    s.sparse_length = s.length / s.sparsity_factor;
    expect(kSparseK, {s.batch, s.heads, s.sparse_length, s.head_dim});
    expect(kSparseV, in[kSparseK].shape);
    const auto& ms = in[kSparseMask].shape;
    s.sparse_mask_heads = ms.size() == 4 ? ms[1] : 0;
    if (s.sparse_mask_heads != 1 && s.sparse_mask_heads != s.heads) s.sparse_mask_heads = 1;
    expect(kSparseMask, {s.batch, s.sparse_mask_heads, s.sparse_length, 1});
  }
}

void resolve_attributes(lsg::BlockSparseShape& s, const Attributes& attrs, Op op) {
  s.block_size = attrs.block_size;
  s.sparsity_factor = attrs.sparsity_factor;
  s.sparse_block_size = attrs.sparse_block_size;
  s.scale = attrs.scale > 0.0f ? attrs.scale : 1.0f / std::sqrt(static_cast<float>(s.head_dim));
  if (s.length % s.block_size)
    fail("length " + std::to_string(s.length) + " of the tokens is not a multiple of block_size " +
         std::to_string(s.block_size), op);
}

// LSGAttention: q, k, v (n, G + T, h * d), the first G rows the globals.
lsg::BlockSparseShape resolve_lsg_shape(const Attributes& attrs, const InputView (&in)[kNumInputs]) {
  const Op op = Op::kLSG;
  lsg::BlockSparseShape s;
  const auto& qs = in[kQ].shape;
  if (qs.size() != 3) fail("input 'q' must be (batch, num_global + length, num_heads * head_dim), got " + shape_str(qs), op);
  if (qs[2] % attrs.num_heads) fail("the last dimension of 'q' (" + std::to_string(qs[2]) + ") is not a multiple of num_heads", op);
  if (qs[1] < attrs.num_global) fail("'q' has fewer rows than num_global", op);
  s.batch = qs[0];
  s.heads = attrs.num_heads;
  s.num_global = attrs.num_global;
  s.length = qs[1] - attrs.num_global;
  s.head_dim = qs[2] / attrs.num_heads;
  resolve_attributes(s, attrs, op);
  expect_shape(in, kK, qs, op);
  expect_shape(in, kV, qs, op);
  resolve_mask_and_sparse(s, in, op);
  s.tokens = s.globals = lsg::Strides::token_major(s.heads, s.num_global + s.length, s.head_dim);
  s.global_queries = true;
  return s;
}

lsg::BlockSparseShape resolve_shape(const Attributes& attrs, const InputView (&in)[kNumInputs]) {
  auto expect = [&](size_t i, const std::vector<int64_t>& shape) { expect_shape(in, i, shape, Op::kBlockSparse); };
  lsg::BlockSparseShape s;
  if (in[kQ].shape.size() != 4) fail("input 'q' must be (batch, heads, length, head_dim), got " + shape_str(in[kQ].shape));
  s.batch = in[kQ].shape[0];
  s.heads = in[kQ].shape[1];
  s.length = in[kQ].shape[2];
  s.head_dim = in[kQ].shape[3];
  resolve_attributes(s, attrs, Op::kBlockSparse);
  expect(kK, in[kQ].shape);
  expect(kV, in[kQ].shape);
  if (in[kGlobalK].shape.size() != 4) fail("input 'global_k' must be (batch, heads, G, head_dim)");
  s.num_global = in[kGlobalK].shape[2];
  expect(kGlobalK, {s.batch, s.heads, s.num_global, s.head_dim});
  expect(kGlobalV, in[kGlobalK].shape);
  resolve_mask_and_sparse(s, in, Op::kBlockSparse);
  s.tokens = lsg::Strides::head_major(s.heads, s.length, s.head_dim);
  s.globals = lsg::Strides::head_major(s.heads, s.num_global, s.head_dim);
  return s;
}

lsg::BlockSparseShape resolve_op_shape(Op op, const Attributes& attrs, const InputView (&in)[kNumInputs]) {
  return op == Op::kLSG ? resolve_lsg_shape(attrs, in) : resolve_shape(attrs, in);
}

// Typed views of the inputs (absent or empty ones: null), in the kernels' tensor structs. For
// LSGAttention the globals are the first G rows of q, k, v and of the output, the tokens the rest.
// element_bytes: the size of one element of the inputs (the CPU views are float32).
template <typename Tensors, typename Pointer>
Tensors make_tensors(const lsg::BlockSparseShape& s, const InputView (&in)[kNumInputs], Pointer out,
                     size_t element_bytes) {
  using Const = typename std::remove_pointer<decltype(Tensors::q)>::type;
  auto view = [&](size_t i) -> Const* { return in[i].present ? static_cast<Const*>(in[i].data) : nullptr; };
  auto skip_globals = [&](auto* base) {  // row G of a (n, G + T, h * d) tensor
    using Byte = typename std::conditional<std::is_const<std::remove_pointer_t<decltype(base)>>::value, const char,
                                           char>::type;
    return reinterpret_cast<decltype(base)>(reinterpret_cast<Byte*>(base) + s.num_global * s.tokens.row * element_bytes);
  };
  Tensors t;
  t.q = view(kQ);
  t.k = view(kK);
  t.v = view(kV);
  t.key_mask = view(kKeyMask);
  t.sparse_k = view(kSparseK);
  t.sparse_v = view(kSparseV);
  t.sparse_mask = view(kSparseMask);
  t.out = out;
  if (s.global_queries) {
    t.global_q = t.q, t.global_k = t.k, t.global_v = t.v, t.global_out = out;
    t.q = skip_globals(t.q), t.k = skip_globals(t.k), t.v = skip_globals(t.v), t.out = skip_globals(out);
  } else {
    t.global_k = view(kGlobalK);
    t.global_v = view(kGlobalV);
  }
  return t;
}

enum class Device { kCpu, kCuda };

template <typename Element>
constexpr ONNXTensorElementDataType kOnnxType =
    std::is_same<Element, float>::value            ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT
    : std::is_same<Element, Ort::Float16_t>::value ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16
                                                   : ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16;

#if defined(LSG_OPS_WITH_CUDA)
template <typename Element>
constexpr lsg::ElementType kElementType = std::is_same<Element, float>::value            ? lsg::ElementType::kFloat32
                                          : std::is_same<Element, Ort::Float16_t>::value ? lsg::ElementType::kFloat16
                                                                                         : lsg::ElementType::kBFloat16;
#endif

// Element: float or Ort::Float16_t on the CPU (float16 is computed in float32), float,
// Ort::Float16_t or Ort::BFloat16_t on CUDA.
template <typename Element, Device kDevice, Op kOp>
struct BlockSparseAttentionKernel {
  BlockSparseAttentionKernel(const OrtApi& api, const OrtKernelInfo* info)
      : api_(api), attrs_(read_attributes(api, info, kOp)) {}

  OrtStatusPtr ComputeV2(OrtKernelContext* raw_context) {
    try {
      Compute(raw_context);
      return nullptr;
    } catch (const Ort::Exception& e) {
      return api_.CreateStatus(e.GetOrtErrorCode(), e.what());
    } catch (const std::invalid_argument& e) {
      return api_.CreateStatus(ORT_INVALID_ARGUMENT, e.what());
    } catch (const std::exception& e) {
      return api_.CreateStatus(ORT_FAIL, (std::string(op_name(kOp)) + ": " + e.what()).c_str());
    }
  }

 private:
  void Compute(OrtKernelContext* raw_context) {
    Ort::KernelContext context(raw_context);
    InputView in[kNumInputs];
    for (size_t i = 0; i < input_count(kOp) && i < context.GetInputCount(); ++i) {
      Ort::ConstValue value = context.GetInput(i);
      if (!value) continue;
      auto info = value.GetTensorTypeAndShapeInfo();
      InputView& view = in[input_slot(kOp, i)];
      view.shape = info.GetShape();
      view.count = info.GetElementCount();
      view.present = view.count > 0;
      // GetTensorMutableData (API 1) rather than GetTensorRawData (GetTensorData, API 23); only read
      view.data = view.present ? tensor_data(value) : nullptr;
    }
    const lsg::BlockSparseShape s = resolve_op_shape(kOp, attrs_, in);
    auto output = context.GetOutput(0, in[kQ].shape);
    if (in[kQ].count == 0) return;
    void* out = output.GetTensorMutableRawData();
#if defined(LSG_OPS_WITH_CUDA)
    if constexpr (kDevice == Device::kCuda) {
      const char* error = lsg::block_sparse_attention_cuda(
          s, make_tensors<lsg::BlockSparseDeviceTensors>(s, in, out, sizeof(Element)), kElementType<Element>,
          context.GetGPUComputeStream());
      if (error) throw std::runtime_error(error);
      return;
    }
#endif
    if constexpr (kDevice == Device::kCpu) compute_cpu(context, s, in, out);
  }

  static void compute_cpu(Ort::KernelContext& context, const lsg::BlockSparseShape& s, InputView (&in)[kNumInputs],
                          void* out) {
    std::vector<float> converted;  // float16: every input once in float32, then the float32 kernel
    float* out_float = static_cast<float*>(out);
    if constexpr (!std::is_same<Element, float>::value) {
      size_t total = in[kQ].count;  // output buffer first
      for (size_t i = 0; i < kNumInputs; ++i)
        if (in[i].present) total += in[i].count;
      converted.resize(total);
      float* cursor = converted.data() + in[kQ].count;
      for (size_t i = 0; i < kNumInputs; ++i) {
        if (!in[i].present) continue;
        lsg::half_to_float(static_cast<const uint16_t*>(in[i].data), cursor, in[i].count);
        in[i].data = cursor;
        cursor += in[i].count;
      }
      out_float = converted.data();
    }
    lsg::BlockSparseTensors t = make_tensors<lsg::BlockSparseTensors>(s, in, out_float, sizeof(float));
    struct Job {
      const lsg::BlockSparseShape* shape;
      const lsg::BlockSparseTensors* tensors;
      lsg::Strides keys;
      float *k_copy, *v_copy;
    } job{&s, &t, s.tokens, nullptr, nullptr};
    // k and v with rows h * d apart: laid out head-major first, in a buffer this thread keeps
    thread_local std::vector<float> keys_buffer;
    if (const int64_t elements = lsg::keys_copy_elements(s)) {
      if (keys_buffer.size() < static_cast<size_t>(2 * elements)) keys_buffer.resize(2 * elements);
      job.k_copy = keys_buffer.data();
      job.v_copy = keys_buffer.data() + elements;
      context.ParallelFor(
          [](void* data, size_t task) {
            const Job* j = static_cast<const Job*>(data);
            lsg::copy_keys_cpu_task(*j->shape, *j->tensors, j->k_copy, j->v_copy, static_cast<int64_t>(task));
          },
          static_cast<size_t>(s.batch * s.heads), 0, &job);
      t.k = job.k_copy;
      t.v = job.v_copy;
      job.keys = lsg::Strides::head_major(s.heads, s.length, s.head_dim);
    }
    context.ParallelFor(
        [](void* data, size_t task) {
          const Job* j = static_cast<const Job*>(data);
          lsg::block_sparse_attention_cpu_task(*j->shape, *j->tensors, j->keys, static_cast<int64_t>(task));
        },
        static_cast<size_t>(s.num_tasks()), 0, &job);
    if constexpr (!std::is_same<Element, float>::value)
      lsg::float_to_half(converted.data(), static_cast<uint16_t*>(out), in[kQ].count);
  }

  const OrtApi& api_;
  const Attributes attrs_;
};

template <typename Element, Device kDevice, Op kOp>
struct BlockSparseAttentionOp : Ort::CustomOpBase<BlockSparseAttentionOp<Element, kDevice, kOp>,
                                                  BlockSparseAttentionKernel<Element, kDevice, kOp>,
                                                  /*WithStatus=*/true> {
  BlockSparseAttentionOp() { OrtCustomOp::version = kOrtApiVersion; }  // not the headers' ORT_API_VERSION

  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    try {
      *kernel = new BlockSparseAttentionKernel<Element, kDevice, kOp>(api, info);
      return nullptr;
    } catch (const std::exception& e) {
      return api.CreateStatus(ORT_INVALID_ARGUMENT, e.what());
    }
  }
  const char* GetName() const { return op_name(kOp); }
  const char* GetExecutionProviderType() const {
    return kDevice == Device::kCuda ? "CUDAExecutionProvider" : "CPUExecutionProvider";
  }
  size_t GetInputTypeCount() const { return input_count(kOp); }
  ONNXTensorElementDataType GetInputType(size_t) const { return kOnnxType<Element>; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return input_slot(kOp, index) >= kSparseK ? OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_OPTIONAL
                                              : OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return kOnnxType<Element>; }
};

template <Op kOp>
struct OpSet {  // every kernel of one op
  BlockSparseAttentionOp<float, Device::kCpu, kOp> cpu_float;
  BlockSparseAttentionOp<Ort::Float16_t, Device::kCpu, kOp> cpu_half;
#if defined(LSG_OPS_WITH_CUDA)
  BlockSparseAttentionOp<float, Device::kCuda, kOp> cuda_float;
  BlockSparseAttentionOp<Ort::Float16_t, Device::kCuda, kOp> cuda_half;
  BlockSparseAttentionOp<Ort::BFloat16_t, Device::kCuda, kOp> cuda_bfloat16;
#endif
  void add_to(Ort::CustomOpDomain& domain) {
    domain.Add(&cpu_float);
    domain.Add(&cpu_half);
#if defined(LSG_OPS_WITH_CUDA)
    domain.Add(&cuda_float);
    domain.Add(&cuda_half);
    domain.Add(&cuda_bfloat16);
#endif
  }
};
OpSet<Op::kBlockSparse> g_block_sparse_ops;
OpSet<Op::kLSG> g_lsg_ops;

// "1.31.1" -> true for min_minor <= 31; a newer major counts as new enough
bool version_at_least(const char* version, uint32_t min_minor) {
  if (version == nullptr) return false;
  int major = 0, minor = 0;
  if (std::sscanf(version, "%d.%d", &major, &minor) != 2) return false;
  return major > 1 || (major == 1 && minor >= static_cast<int>(min_minor));
}

}  // namespace

extern "C" LSG_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  // The version string first: GetApi() of a version the runtime lacks prints a line of its own
  const char* version = api_base->GetVersionString();
  const OrtApi* api = version_at_least(version, kOrtApiVersion) ? api_base->GetApi(kOrtApiVersion) : nullptr;
  if (api == nullptr) {
    const OrtApi* old_api = api_base->GetApi(1);  // every runtime has it: enough to return the error
    const std::string message = std::string("the LSG custom-op library (") + kDomain + ") needs ONNX Runtime >= 1." +
                                std::to_string(kOrtApiVersion) + " (C API version " + std::to_string(kOrtApiVersion) +
                                "), this runtime is " + (version ? version : "of unknown version") +
                                ": upgrade onnxruntime";
    return old_api ? old_api->CreateStatus(ORT_FAIL, message.c_str()) : nullptr;
  }
  Ort::InitApi(api);

  static std::mutex mutex;
  static std::vector<Ort::CustomOpDomain> domains;  // must outlive every session using them
  std::lock_guard<std::mutex> lock(mutex);
  try {
    Ort::CustomOpDomain domain{kDomain};
    g_block_sparse_ops.add_to(domain);
    g_lsg_ops.add_to(domain);
    Ort::UnownedSessionOptions session_options(options);
    session_options.Add(domain);
    domains.push_back(std::move(domain));
  } catch (const Ort::Exception& e) {
    return api->CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}

#if defined(LSG_OPS_WITH_CUDA)
namespace {

// Shared body of the C entries: the op's own attribute and shape checks, then the CUDA kernel.
int run_cuda_entry(Op op, Attributes attrs, const void* const* inputs, const int64_t* dims, const int64_t* ranks,
                   int num_inputs, void* out, int element_type, void* stream, char* error, size_t error_size) {
  try {
    const int required = op == Op::kLSG ? 4 : static_cast<int>(kSparseK);
    if (num_inputs < required || num_inputs > static_cast<int>(input_count(op)))
      fail(std::to_string(required) + " to " + std::to_string(input_count(op)) + " inputs", op);
    if (element_type < 0 || element_type > static_cast<int>(lsg::ElementType::kBFloat16)) fail("unknown element type", op);
    check_attributes(attrs, op);
    InputView in[kNumInputs];
    for (int i = 0; i < num_inputs; ++i) {
      InputView& view = in[input_slot(op, i)];
      if (ranks[i] < 0 || ranks[i] > 4)
        fail(std::string("input '") + kInputNames[input_slot(op, i)] + "' must have rank <= 4", op);
      view.shape.assign(dims + 4 * i, dims + 4 * i + ranks[i]);
      view.count = 1;
      for (int64_t d : view.shape) view.count *= static_cast<size_t>(d);
      view.present = inputs[i] != nullptr && view.count > 0;
      view.data = view.present ? inputs[i] : nullptr;
    }
    const lsg::BlockSparseShape s = resolve_op_shape(op, attrs, in);
    if (in[kQ].count == 0) return 0;
    const auto type = static_cast<lsg::ElementType>(element_type);
    const size_t bytes = type == lsg::ElementType::kFloat32 ? 4 : 2;
    const char* message =
        lsg::block_sparse_attention_cuda(s, make_tensors<lsg::BlockSparseDeviceTensors>(s, in, out, bytes), type, stream);
    if (message) throw std::runtime_error(message);
    return 0;
  } catch (const std::exception& e) {
    if (error && error_size) std::snprintf(error, error_size, "%s", e.what());
    return 1;
  }
}

Attributes block_attributes(int64_t block_size, int64_t sparse_block_size, int64_t sparsity_factor, float scale) {
  Attributes attrs;
  attrs.block_size = block_size;
  attrs.sparse_block_size = sparse_block_size;
  attrs.sparsity_factor = sparsity_factor;
  attrs.scale = scale;
  return attrs;
}

}  // namespace

// C entries of the CUDA kernel, for checks without onnxruntime-gpu (lsg_export/ops/cuda_harness.py):
// the op's own attribute and shape checks, then the kernel, enqueued on `stream` (a cudaStream_t).
// inputs[i]: device pointer of input i in the op's order (null: absent); dims[4 i .. 4 i + ranks[i]):
// its shape; element_type: lsg::ElementType. Returns 0, or 1 with a message in `error`.
extern "C" LSG_EXPORT int lsg_block_sparse_attention_cuda(const void* const* inputs, const int64_t* dims,
                                                          const int64_t* ranks, int num_inputs, void* out,
                                                          int element_type, int64_t block_size,
                                                          int64_t sparse_block_size, int64_t sparsity_factor,
                                                          float scale, void* stream, char* error, size_t error_size) {
  return run_cuda_entry(Op::kBlockSparse, block_attributes(block_size, sparse_block_size, sparsity_factor, scale),
                        inputs, dims, ranks, num_inputs, out, element_type, stream, error, error_size);
}

// LSGAttention: inputs q, k, v, key_mask [, sparse_k, sparse_v, sparse_mask].
extern "C" LSG_EXPORT int lsg_attention_cuda(const void* const* inputs, const int64_t* dims, const int64_t* ranks,
                                             int num_inputs, void* out, int element_type, int64_t num_heads,
                                             int64_t num_global, int64_t block_size, int64_t sparse_block_size,
                                             int64_t sparsity_factor, float scale, void* stream, char* error,
                                             size_t error_size) {
  Attributes attrs = block_attributes(block_size, sparse_block_size, sparsity_factor, scale);
  attrs.num_heads = num_heads;
  attrs.num_global = num_global;
  return run_cuda_entry(Op::kLSG, attrs, inputs, dims, ranks, num_inputs, out, element_type, stream, error,
                        error_size);
}
#endif
