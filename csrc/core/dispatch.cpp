// Run-time choice of the tile kernels: one portable build, the best instruction set at run time.
#include <cstdlib>
#include <mutex>
#include <string>

#include "kernels.hpp"

namespace ec {
namespace {

bool cpu_has(const std::string& name) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (name == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (name == "avx512" || name == "avx512bf16") {
    const bool base = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
    return name == "avx512" ? base : base && __builtin_cpu_supports("avx512bf16");
  }
  // AMX tiles for the products, AVX-512 BF16 for the packing and the epilogues.
  if (name == "amx")
    return cpu_has("avx512bf16") && __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16");
#endif
  return name == "generic";
}

const KernelSet* find(const std::string& name) {
  if (name == "generic") return &generic_kernels();
#if defined(EC_HAVE_AVX2_KERNELS)
  if (name == "avx2" && cpu_has("avx2")) return &avx2_kernels();
#endif
#if defined(EC_HAVE_AVX512_KERNELS)
  if (name == "avx512" && cpu_has("avx512")) return &avx512_kernels();
#endif
#if defined(EC_HAVE_AVX512BF16_KERNELS)
  if (name == "avx512bf16" && cpu_has("avx512bf16")) return &avx512bf16_kernels();
#endif
  // AMX and its scalar model: by name only, never in available_kernels() (the automatic choice).
#if defined(EC_HAVE_AMX_KERNELS) && defined(EC_HAVE_AVX512BF16_KERNELS)
  if (name == "amx" && cpu_has("amx")) return &amx_kernels();
#endif
  if (name == "amx-model") return &amx_model_kernels();
  return nullptr;
}

/// Why `name` cannot run here, for the error messages ("" when nothing more specific is known).
std::string unavailable_reason(const std::string& name) {
  if (name != "amx") return "";
#if defined(EC_HAVE_AMX_KERNELS) && defined(EC_HAVE_AVX512BF16_KERNELS)
  return " (this CPU has no AMX: it needs AMX-TILE, AMX-BF16 and AVX-512 BF16, lscpu flags amx_tile amx_bf16 "
         "avx512_bf16)";
#else
  return " (this build has no AMX kernels: the compiler refused -mamx-tile -mamx-bf16)";
#endif
}

const KernelSet* best() {
  const auto names = available_kernels();
  return find(names.back());
}

const KernelSet* best_fp32() {
  const KernelSet* out = &generic_kernels();
  for (const auto& n : available_kernels())
    if (find(n)->per_word == 1) out = find(n);
  return out;
}

std::mutex g_mu;
const KernelSet* g_active = nullptr;

}  // namespace

std::vector<std::string> available_kernels() {
  std::vector<std::string> out{"generic"};
  for (const char* n : {"avx2", "avx512", "avx512bf16"})
    if (find(n)) out.emplace_back(n);
  return out;
}

const KernelSet& fp32_variant(const KernelSet& ks) {
  if (ks.per_word == 1) return ks;
#if defined(EC_HAVE_AVX512_KERNELS)
  if (cpu_has("avx512")) return avx512_kernels();
#endif
  return *best_fp32();
}

void select_kernels(const std::string& name) {
  const KernelSet* ks = name == "auto" ? best() : find(name);
  if (!ks) {
    std::string avail;
    for (const auto& n : available_kernels()) avail += (avail.empty() ? "" : ", ") + n;
    fail("kernel set '" + name + "' is not available on this CPU or build" + unavailable_reason(name) +
         "; available: " + avail + " (or 'auto')");
  }
  std::lock_guard<std::mutex> lock(g_mu);
  g_active = ks;
}

const KernelSet& kernels() {
  std::lock_guard<std::mutex> lock(g_mu);
  if (!g_active) {
    const char* env = std::getenv("EMBEDCLUSTER_ISA");
    if (env && *env) {
      g_active = env == std::string("auto") ? best() : find(env);
      if (!g_active)
        fail(std::string("EMBEDCLUSTER_ISA=") + env + " names a kernel set this CPU or build cannot run" +
             unavailable_reason(env) + "; unset it or use generic");
    } else {
      g_active = best();
    }
  }
  return *g_active;
}

}  // namespace ec
