// Shared helpers of the registry tests: a CPU-engine backend that can pretend to be any hardware,
// temporary state directories, and deterministic registry contents.
#pragma once

#include <memory>
#include <string>

#include "server/backend/backend.h"
#include "server/registry/registry.h"

namespace sage::registry::testing {

// BackendInfo of the embedded CPU backend (all recipes, INT8+FP8 default).
server::BackendInfo CpuBackendInfo();
// BackendInfo of a CUDA device of architecture `arch` ("sm_90", "sm_89") running all recipes.
server::BackendInfo CudaBackendInfo(const std::string& arch);

// The CPU engine behind an arbitrary BackendInfo: numerics are the reference emulation, the
// declared hardware decides costs and defaults.
std::unique_ptr<server::AttentionBackend> MakeEngineBackend(const server::BackendInfo& info);

// mkdtemp under $TMPDIR (or /tmp); removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

ModelSpec TestModel(const std::string& name, int layers = 4, std::optional<int> timesteps = std::nullopt);

// Registry content that is a pure function of `generation`: the kill -9 test compares what it
// loads with SnapshotForGeneration(loaded.generation) to prove the file is one whole version.
RegistrySnapshot SnapshotForGeneration(int64_t generation);

std::string ReadWholeFile(const std::string& path);
void WriteWholeFile(const std::string& path, const std::string& contents);

}  // namespace sage::registry::testing
