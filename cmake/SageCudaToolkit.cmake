# find_package(CUDAToolkit) that works with Debian 12's stock CMake 3.25.1 and CUDA 13.
#
# That module tags CUDA::nvToolsExt as deprecated whenever the project's minimum CMake version is
# >= 3.25, without checking that the target exists. CUDA 13 ships no libnvToolsExt, so the target
# never exists and configure stops in set_property. Later CMake releases guard the tag with
# `if(TARGET CUDA::nvToolsExt AND ...)`. Only where the installed module lacks that guard do we
# show it a lower minimum version, for this one call: the deprecation tag is the only thing the
# module decides on it, and every policy stays as cmake_minimum_required set it.
macro(sage_find_cuda_toolkit)
  file(READ "${CMAKE_ROOT}/Modules/FindCUDAToolkit.cmake" _sage_cuda_module)
  string(FIND "${_sage_cuda_module}" "PROPERTY DEPRECATION \"nvToolsExt" _sage_tags_nvtx)
  string(FIND "${_sage_cuda_module}" "if(TARGET CUDA::nvToolsExt AND" _sage_guarded)
  if(_sage_tags_nvtx GREATER -1 AND _sage_guarded EQUAL -1)
    message(STATUS "sageserve: FindCUDAToolkit tags CUDA::nvToolsExt unguarded; "
                   "finding the toolkit with the minimum version shown as 3.24")
    set(_sage_saved_minimum "${CMAKE_MINIMUM_REQUIRED_VERSION}")
    set(CMAKE_MINIMUM_REQUIRED_VERSION 3.24)
    find_package(CUDAToolkit REQUIRED)
    set(CMAKE_MINIMUM_REQUIRED_VERSION "${_sage_saved_minimum}")
    unset(_sage_saved_minimum)
  else()
    find_package(CUDAToolkit REQUIRED)
  endif()
  unset(_sage_cuda_module)
  unset(_sage_tags_nvtx)
  unset(_sage_guarded)
endmacro()
