// The version GetServerInfo and `sageserve --version` report (the CMake project version).
#pragma once

#include <string_view>

#ifndef SAGESERVE_VERSION_STRING
#define SAGESERVE_VERSION_STRING "0.0.0-dev"
#endif

namespace sage::server {
inline constexpr std::string_view kSageserveVersion = SAGESERVE_VERSION_STRING;
}  // namespace sage::server
