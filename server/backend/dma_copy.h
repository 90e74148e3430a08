// Copying bytes into host memory that a device reads by DMA next (a request's pinned block).
#pragma once

#include <cstddef>

namespace sage::server {

// memcpy, except that on x86-64 the bulk of the bytes is written with non-temporal stores: they go
// to DRAM rather than sitting dirty in this core's cache, where the GPU's copy engine would have to
// snoop them out line by line. (On the H100 host, a 768 KB host-to-device copy took ~25 us from a
// block written long before and ~44 us from one written just before the copy.) The stores are
// fenced before returning, so the bytes are visible to a DMA issued afterwards.
void CopyForDma(void* dst, const void* src, size_t n);

}  // namespace sage::server
