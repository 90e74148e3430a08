#include "server/app/allocator.h"

#include <dlfcn.h>

namespace sage::server {

std::string_view ActiveAllocator() {
  // tcmalloc exports tc_version next to the malloc family it interposes.
  return dlsym(RTLD_DEFAULT, "tc_version") != nullptr ? "tcmalloc" : "glibc";
}

}  // namespace sage::server
