#include "server/backend/encode_output.h"

#include <cstring>

#include "kernels/reference/numerics.h"

namespace sage::server {

void EncodeO(const EngineOutput& out, DType dtype, size_t first, size_t values, std::byte* dst) {
  if (out.has_native_o() && out.o_native_dtype == dtype) {
    std::memcpy(dst, out.o_native.data() + first * 2, values * 2);
  } else if (out.has_native_o()) {
    ConvertBulk(out.o_native.data() + first * 2, out.o_native_dtype, dst, dtype, values);
  } else {
    EncodeFromFloatBulk(out.o.data() + first, dst, values, dtype);
  }
}

}  // namespace sage::server
