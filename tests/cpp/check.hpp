// A tiny test framework for the core's C++ tests: named cases, CHECK that counts failures and
// goes on, and a main that runs one case by name (ctest registers one test per case) or all.
#pragma once

#include <cstdio>
#include <cstring>
#include <vector>

namespace ec_test {

struct Case {
  const char* name;  ///< the name ctest registers (the TEST_CASE identifier)
  void (*run)();     ///< the case's body
};

inline std::vector<Case>& cases() {
  static std::vector<Case> all;
  return all;
}

inline int& failures() {
  static int n = 0;
  return n;
}

inline bool add(const char* name, void (*run)()) {
  cases().push_back({name, run});
  return true;
}

}  // namespace ec_test

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) {                                                           \
      std::fprintf(stderr, "FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      ++ec_test::failures();                                                 \
    }                                                                        \
  } while (0)

// TEST_CASE(name) { ... } defines and registers one case; the CMake build finds the names by
// reading this macro at the start of a line, so keep one case per line start.
#define TEST_CASE(name)                                                        \
  static void name();                                                          \
  static const bool name##_registered [[maybe_unused]] = ec_test::add(#name, name); \
  static void name()

// ec_core_tests            runs every case
// ec_core_tests NAME...    runs the named cases (an unknown name fails)
// ec_core_tests --list     prints the case names
inline int ec_test_main(int argc, char** argv) {
  if (argc == 2 && std::strcmp(argv[1], "--list") == 0) {
    for (const auto& c : ec_test::cases()) std::printf("%s\n", c.name);
    return 0;
  }
  int ran = 0;
  for (const auto& c : ec_test::cases()) {
    bool wanted = argc == 1;
    for (int a = 1; a < argc; ++a) wanted = wanted || std::strcmp(argv[a], c.name) == 0;
    if (!wanted) continue;
    const int before = ec_test::failures();
    c.run();
    std::printf("%s %s\n", ec_test::failures() == before ? "ok  " : "FAIL", c.name);
    ++ran;
  }
  if (ran == 0 || (argc > 1 && ran != argc - 1)) {
    std::fprintf(stderr, "unknown test case name (ec_core_tests --list shows them)\n");
    return 2;
  }
  std::printf("%s\n", ec_test::failures() ? "core tests FAILED" : "core tests passed");
  return ec_test::failures() ? 1 : 0;
}
