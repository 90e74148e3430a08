// Copies between server memory and a client's mapped host shared memory that survive the client
// shrinking, unmapping or freeing the object under the mapping.
//
// A MAP_SHARED mapping of a POSIX shm object stays in the server's address space when the client
// truncates the object, but a load or store to a page past the object's new end raises SIGBUS, which
// would take the whole server down. These copies never touch the mapping from user space: they go
// through process_vm_readv / process_vm_writev on the server's own pid, for which the kernel
// reports such a page as EFAULT (a short count, then -1) instead of a signal. Reading one's own
// process needs no ptrace permission (the kernel allows its own thread group unconditionally).
//
// Use them for every CPU access to a system region a request names; never memcpy from or into it.
#pragma once

#include <cstddef>
#include <span>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace sage::server {

// Copies `src` (inside client shared memory) into `dst` (server memory); the sizes must be equal.
// FAILED_PRECONDITION "<field>: region '<region>' shrank or was unmapped while the request used it"
// (with the region as the status's resource) when part of `src` is no longer backed; INTERNAL for
// any other failure of the copy (the syscall refused, e.g. by a seccomp filter).
absl::Status CopyFromClient(std::span<std::byte> dst, std::span<const std::byte> src, absl::string_view field,
                            absl::string_view region);

// Copies `src` (server memory) into `dst` (inside client shared memory); errors as CopyFromClient.
// On a fault the bytes before the faulting page may have been written.
absl::Status CopyToClient(std::span<std::byte> dst, std::span<const std::byte> src, absl::string_view field,
                          absl::string_view region);

}  // namespace sage::server
