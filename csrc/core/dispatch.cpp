// The registry of kernel sets (what this CPU and build can run) and the forced choice
// (EMBEDCLUSTER_ISA, select_kernels); the self-test and the choice by measurement are in
// kernel_choice.cpp.
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

std::mutex g_mu;
const KernelSet* g_forced = nullptr;  // null: each family's set is chosen by measurement
bool g_forced_read = false;           // EMBEDCLUSTER_ISA read (or overridden by select_kernels)

std::string joined_available() {
  std::string out;
  for (const auto& n : available_kernels()) out += (out.empty() ? "" : ", ") + n;
  return out;
}

}  // namespace

const KernelSet& admitted_kernel(const std::string& name, const std::string& who) {
  const KernelSet* ks = find(name);
  if (ks && kernel_admitted(*ks)) return *ks;
  if (ks)
    fail(who + " names kernel set '" + name + "', which failed its self-test on this CPU and is disabled (" +
         kernel_self_test_failure(name) + "); available: " + joined_available());
  fail(who + " names kernel set '" + name + "', which this CPU or build cannot run" + unavailable_reason(name) +
       "; available: " + joined_available() + " (or 'auto')");
}

const KernelSet* supported_kernel(const std::string& name) { return find(name); }

std::vector<std::string> supported_kernels() {
  std::vector<std::string> out{"generic"};
  for (const char* n : {"avx2", "avx512", "avx512bf16"})
    if (find(n)) out.emplace_back(n);
  return out;
}

std::vector<std::string> available_kernels() {
  std::vector<std::string> out;
  for (const auto& n : supported_kernels())
    if (kernel_admitted(*find(n))) out.push_back(n);
  return out;
}

const KernelSet& fp32_variant(const KernelSet& ks) {
  if (ks.per_word == 1) return ks;
#if defined(EC_HAVE_AVX512_KERNELS)
  if (const KernelSet* same = find("avx512"); same && kernel_admitted(*same)) return *same;
#endif
  return fastest_fp32_kernels();
}

void select_kernels(const std::string& name) {
  const KernelSet* ks = name == "auto" ? nullptr : &admitted_kernel(name, "select_kernels");
  std::lock_guard<std::mutex> lock(g_mu);
  g_forced = ks;
  g_forced_read = true;
}

const KernelSet* forced_kernels() {
  std::lock_guard<std::mutex> lock(g_mu);
  if (!g_forced_read) {
    const char* env = std::getenv("EMBEDCLUSTER_ISA");
    if (env && *env && env != std::string("auto"))
      g_forced = &admitted_kernel(env, std::string("EMBEDCLUSTER_ISA=") + env);
    g_forced_read = true;
  }
  return g_forced;
}

const KernelSet& kernels() {
  const KernelSet* forced = forced_kernels();
  return forced ? *forced : kernels_for(KernelFamily::tile, 384);
}

}  // namespace ec
