// What the fuzz targets share: a check that aborts (libFuzzer then keeps the input as a crash
// artifact) and gRPC slices that own their bytes.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "google/protobuf/stubs/logging.h"
#include "grpcpp/support/slice.h"

// Aborts with the condition and a note when `cond` is false; never compiled out.
#define FUZZ_CHECK(cond, note)                                                                      \
  do {                                                                                              \
    if (!(cond)) {                                                                                  \
      std::fprintf(stderr, "FUZZ_CHECK failed at %s:%d: %s\n  %s\n", __FILE__, __LINE__, #cond,     \
                   std::string(note).c_str());                                                      \
      std::abort();                                                                                 \
    }                                                                                               \
  } while (0)

namespace sage::fuzz {

// Where a target stores a value it computed only to read memory, so the reads are kept.
inline volatile uint64_t g_sink = 0;

// protobuf logs every string field that is not UTF-8 it refuses; fuzzing makes millions.
inline void SilenceProtobufLogs() { google::protobuf::SetLogHandler(nullptr); }

inline void DeleteString(void* s) { delete static_cast<std::string*>(s); }

// A refcounted slice owning a heap copy of `bytes` (exact size, so ASan sees any read past it).
// Not grpc::Slice(buf, len): gRPC inlines small copied slices and merges neighbouring inlined
// ones, which would hide the cuts.
inline grpc::Slice OwnedSlice(std::string_view bytes) {
  auto* owned = new std::string(bytes);
  return grpc::Slice(owned->data(), owned->size(), &DeleteString, owned);
}

}  // namespace sage::fuzz
