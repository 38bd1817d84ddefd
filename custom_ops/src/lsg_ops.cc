// ONNX Runtime registration of the custom-op domain "ai.lsg" (version 1): one op,
// BlockSparseAttention, with a float32 and a float16 CPU kernel (see custom_ops/README.md for the
// contract). Entry point: RegisterCustomOps(OrtSessionOptions*, const OrtApiBase*), which is what
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
constexpr int kMinOrtMinor = 29;  // ORT_API_VERSION of the headers we build against

enum Input : size_t { kQ, kK, kV, kKeyMask, kGlobalK, kGlobalV, kSparseK, kSparseV, kSparseMask, kNumInputs };
const char* const kInputNames[kNumInputs] = {"q", "k", "v", "key_mask", "global_k", "global_v",
                                             "sparse_k", "sparse_v", "sparse_mask"};

[[noreturn]] void fail(const std::string& message) {
  throw std::invalid_argument(std::string(kOpName) + ": " + message);
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

struct Attributes {
  int64_t block_size = 0, sparse_block_size = 0, sparsity_factor = 1;
  float scale = 0.0f;
};

int64_t int_attribute(const OrtApi& api, const OrtKernelInfo* info, const char* name, int64_t fallback, bool required) {
  int64_t value = 0;
  OrtStatus* status = api.KernelInfoGetAttribute_int64(info, name, &value);
  if (status == nullptr) return value;
  api.ReleaseStatus(status);
  if (required) fail(std::string("missing required attribute '") + name + "'");
  return fallback;
}

float float_attribute(const OrtApi& api, const OrtKernelInfo* info, const char* name, float fallback) {
  float value = 0.0f;
  OrtStatus* status = api.KernelInfoGetAttribute_float(info, name, &value);
  if (status == nullptr) return value;
  api.ReleaseStatus(status);
  return fallback;
}

struct Present {
  Ort::ConstValue value{nullptr};
  std::vector<int64_t> shape;
  size_t count = 0;
  bool present = false;  // given and non-empty
};

template <bool kHalf>
struct BlockSparseAttentionKernel {
  BlockSparseAttentionKernel(const OrtApi& api, const OrtKernelInfo* info) : api_(api) {
    attrs_.block_size = int_attribute(api, info, "block_size", 0, true);
    attrs_.sparse_block_size = int_attribute(api, info, "sparse_block_size", 0, false);
    attrs_.sparsity_factor = int_attribute(api, info, "sparsity_factor", 1, false);
    attrs_.scale = float_attribute(api, info, "scale", 0.0f);
    if (attrs_.block_size < 1) fail("block_size must be >= 1");
    if (attrs_.sparse_block_size < 0) fail("sparse_block_size must be >= 0");
    if (attrs_.sparsity_factor < 1 || attrs_.block_size % attrs_.sparsity_factor)
      fail("sparsity_factor must be >= 1 and divide block_size");
    if (!(attrs_.scale >= 0.0f) || std::isinf(attrs_.scale)) fail("scale must be finite and >= 0 (0: 1/sqrt(head_dim))");
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* raw_context) {
    try {
      Compute(raw_context);
      return nullptr;
    } catch (const Ort::Exception& e) {
      return api_.CreateStatus(e.GetOrtErrorCode(), e.what());
    } catch (const std::invalid_argument& e) {
      return api_.CreateStatus(ORT_INVALID_ARGUMENT, e.what());
    } catch (const std::exception& e) {
      return api_.CreateStatus(ORT_FAIL, (std::string(kOpName) + ": " + e.what()).c_str());
    }
  }

 private:
  using Element = typename std::conditional<kHalf, Ort::Float16_t, float>::type;

  void Compute(OrtKernelContext* raw_context) {
    Ort::KernelContext context(raw_context);
    Present in[kNumInputs];
    for (size_t i = 0; i < kNumInputs; ++i) {
      if (i >= context.GetInputCount()) continue;
      in[i].value = context.GetInput(i);
      if (!in[i].value) continue;
      auto info = in[i].value.GetTensorTypeAndShapeInfo();
      in[i].shape = info.GetShape();
      in[i].count = info.GetElementCount();
      in[i].present = in[i].count > 0;
    }
    auto expect = [&](size_t i, const std::vector<int64_t>& shape) {
      if (in[i].shape != shape)
        fail(std::string("input '") + kInputNames[i] + "' has shape " + shape_str(in[i].shape) + ", expected " +
             shape_str(shape));
    };

    lsg::BlockSparseShape s;
    if (in[kQ].shape.size() != 4) fail("input 'q' must be (batch, heads, length, head_dim), got " + shape_str(in[kQ].shape));
    s.batch = in[kQ].shape[0];
    s.heads = in[kQ].shape[1];
    s.length = in[kQ].shape[2];
    s.head_dim = in[kQ].shape[3];
    s.block_size = attrs_.block_size;
    s.sparsity_factor = attrs_.sparsity_factor;
    s.sparse_block_size = attrs_.sparse_block_size;
    s.scale = attrs_.scale > 0.0f ? attrs_.scale : 1.0f / std::sqrt(static_cast<float>(s.head_dim));
    if (s.length % s.block_size)
      fail("length " + std::to_string(s.length) + " of 'q' is not a multiple of block_size " + std::to_string(s.block_size));
    expect(kK, in[kQ].shape);
    expect(kV, in[kQ].shape);
    if (in[kKeyMask].shape == std::vector<int64_t>{s.batch, s.length}) {
      // (n, T) accepted as well as (n, 1, T, 1)
    } else {
      expect(kKeyMask, {s.batch, 1, s.length, 1});
    }
    if (in[kGlobalK].shape.size() != 4) fail("input 'global_k' must be (batch, heads, G, head_dim)");
    s.num_global = in[kGlobalK].shape[2];
    expect(kGlobalK, {s.batch, s.heads, s.num_global, s.head_dim});
    expect(kGlobalV, in[kGlobalK].shape);

    const int present = in[kSparseK].present + in[kSparseV].present + in[kSparseMask].present;
    if (present != 0 && present != 3) fail("sparse_k, sparse_v and sparse_mask must be given all three or none");
    if (present == 3 && s.sparse_block_size > 0) {
      s.sparse_length = s.length / s.sparsity_factor;
      expect(kSparseK, {s.batch, s.heads, s.sparse_length, s.head_dim});
      expect(kSparseV, in[kSparseK].shape);
      const auto& ms = in[kSparseMask].shape;
      s.sparse_mask_heads = ms.size() == 4 ? ms[1] : 0;
      if (s.sparse_mask_heads != 1 && s.sparse_mask_heads != s.heads) s.sparse_mask_heads = 1;
      expect(kSparseMask, {s.batch, s.sparse_mask_heads, s.sparse_length, 1});
    }

    const std::vector<int64_t>& out_shape = in[kQ].shape;
    auto output = context.GetOutput(0, out_shape);
    if (in[kQ].count == 0) return;

    lsg::BlockSparseTensors t;
    std::vector<float> converted;  // float16: every input once in float32, then the float32 kernel
    if constexpr (kHalf) {
      size_t total = in[kQ].count;  // output buffer first
      for (size_t i = 0; i < kNumInputs; ++i)
        if (in[i].present) total += in[i].count;
      converted.resize(total);
      float* cursor = converted.data() + in[kQ].count;
      const float* views[kNumInputs] = {};
      for (size_t i = 0; i < kNumInputs; ++i) {
        if (!in[i].present) continue;
        const auto* src = reinterpret_cast<const uint16_t*>(in[i].value.GetTensorData<Ort::Float16_t>());
        lsg::half_to_float(src, cursor, in[i].count);
        views[i] = cursor;
        cursor += in[i].count;
      }
      t = make_tensors(views, converted.data());
    } else {
      const float* views[kNumInputs] = {};
      for (size_t i = 0; i < kNumInputs; ++i)
        if (in[i].present) views[i] = in[i].value.GetTensorData<float>();
      t = make_tensors(views, output.GetTensorMutableData<float>());
    }

    struct Job {
      const lsg::BlockSparseShape* shape;
      const lsg::BlockSparseTensors* tensors;
    } job{&s, &t};
    const int64_t tasks = s.num_tasks();
    context.ParallelFor(
        [](void* data, size_t task) {
          const Job* j = static_cast<const Job*>(data);
          lsg::block_sparse_attention_cpu_task(*j->shape, *j->tensors, static_cast<int64_t>(task));
        },
        static_cast<size_t>(tasks), 0, &job);

    if constexpr (kHalf) {
      auto* dst = reinterpret_cast<uint16_t*>(output.GetTensorMutableData<Ort::Float16_t>());
      lsg::float_to_half(converted.data(), dst, in[kQ].count);
    }
  }

  static lsg::BlockSparseTensors make_tensors(const float* const* views, float* out) {
    lsg::BlockSparseTensors t;
    t.q = views[kQ];
    t.k = views[kK];
    t.v = views[kV];
    t.key_mask = views[kKeyMask];
    t.global_k = views[kGlobalK];
    t.global_v = views[kGlobalV];
    t.sparse_k = views[kSparseK];
    t.sparse_v = views[kSparseV];
    t.sparse_mask = views[kSparseMask];
    t.out = out;
    return t;
  }

  const OrtApi& api_;
  Attributes attrs_;
};

template <bool kHalf>
struct BlockSparseAttentionOp
    : Ort::CustomOpBase<BlockSparseAttentionOp<kHalf>, BlockSparseAttentionKernel<kHalf>, /*WithStatus=*/true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    try {
      *kernel = new BlockSparseAttentionKernel<kHalf>(api, info);
      return nullptr;
    } catch (const std::exception& e) {
      return api.CreateStatus(ORT_INVALID_ARGUMENT, e.what());
    }
  }
  const char* GetName() const { return kOpName; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return kNumInputs; }
  ONNXTensorElementDataType GetInputType(size_t) const { return kType; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index >= kSparseK ? OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_OPTIONAL
                             : OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return kType; }

  static constexpr ONNXTensorElementDataType kType =
      kHalf ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
};

BlockSparseAttentionOp<false> g_op_float;
BlockSparseAttentionOp<true> g_op_half;

// "1.31.1" -> 31 when the major is 1; a newer major counts as new enough
bool version_at_least(const char* version, int min_minor) {
  if (version == nullptr) return false;
  int major = 0, minor = 0;
  if (std::sscanf(version, "%d.%d", &major, &minor) != 2) return false;
  return major > 1 || (major == 1 && minor >= min_minor);
}

}  // namespace

extern "C" LSG_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const char* version = api_base->GetVersionString();
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr || !version_at_least(version, kMinOrtMinor)) {
    // the oldest API table every runtime has is enough to report the error
    const OrtApi* old_api = api_base->GetApi(1);
    std::string message = std::string("the LSG custom-op library (") + kDomain + "." + kOpName +
                          ") needs ONNX Runtime >= 1." + std::to_string(kMinOrtMinor) + " (C API version " +
                          std::to_string(ORT_API_VERSION) + "), this runtime is " + (version ? version : "unknown") +
                          ": upgrade onnxruntime";
    std::fprintf(stderr, "%s\n", message.c_str());
    return old_api ? old_api->CreateStatus(ORT_FAIL, message.c_str()) : nullptr;
  }
  Ort::InitApi(api);

  static std::mutex mutex;
  static std::vector<Ort::CustomOpDomain> domains;  // must outlive every session using them
  std::lock_guard<std::mutex> lock(mutex);
  try {
    Ort::CustomOpDomain domain{kDomain};
    domain.Add(&g_op_float);
    domain.Add(&g_op_half);
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
