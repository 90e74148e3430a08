// The state of one session (SessionStore's private type), shared by the store's translation
// units: session_store.cc (lifecycle, positions, forks) and session_page_io.cc (bytes in and out
// of the pages).
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "server/session/session_store.h"

namespace sage::server {

// One session. Its page tables and lengths are guarded by `mu`; the pages it shares with forks are
// never written while shared (copy on write), so readers need only their own session's lock.
struct SessionStore::Session {
  std::mutex mu;
  std::string id;
  std::string owner;
  SessionShape shape;
  bool closed = false;
  std::chrono::steady_clock::time_point last_use = std::chrono::steady_clock::now();
  struct Layer {
    KvPageLayout layout;  // the layer's storage, page_tokens, heads, head_dim, dtype
    std::vector<PageId> pages;
    int64_t length = 0;
    std::vector<float> k_mean;  // [Hkv, D]; set by the first append (HasKMean storages)
    // The last append: a step repeated with this position and step id is a retry.
    std::optional<int64_t> last_position;
    uint64_t last_step_id = 0;
    int64_t last_count = 0;
  };
  std::vector<Layer> layers;
  int pool = 0;  // index of the device pool holding every page of the session

  int page_tokens(int layer) const { return layers[static_cast<size_t>(layer)].layout.page_tokens; }
  // Whether a step's K/V may stay in the memory of the session's GPU pool (mu held): the pool
  // encodes every token there (KvMemory::WriteTokens) once the host has taken the layer's K mean
  // from its first append, where the storage has one.
  bool KvMayStayOnDevice(int layer) const {
    const Layer& l = layers[static_cast<size_t>(layer)];
    return !HasKMean(l.layout.storage) || !l.k_mean.empty();
  }
  int64_t PageCount() const {
    int64_t n = 0;
    for (const Layer& l : layers) n += static_cast<int64_t>(l.pages.size());
    return n;
  }
};

}  // namespace sage::server
