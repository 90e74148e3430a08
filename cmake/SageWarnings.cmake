# sage_project_target(<target>): warnings (as errors unless SAGESERVE_WERROR=OFF) for project code only.
function(sage_project_target tgt)
  target_compile_options(${tgt} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wno-missing-field-initializers>
    $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<BOOL:${SAGESERVE_WERROR}>>:-Werror>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall>
    $<$<AND:$<COMPILE_LANGUAGE:CUDA>,$<BOOL:${SAGESERVE_WERROR}>>:-Werror=all-warnings>)
endfunction()
