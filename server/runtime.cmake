# Server runtime (issue 5): the metrics registry and HTTP endpoint, and the dynamic batcher.
# Included from server/CMakeLists.txt (and by the runtime tests when built on their own).
include_guard(GLOBAL)

add_library(sage_metrics STATIC
  ${CMAKE_CURRENT_LIST_DIR}/metrics/metrics_registry.cc
  ${CMAKE_CURRENT_LIST_DIR}/metrics/prometheus_text.cc
  ${CMAKE_CURRENT_LIST_DIR}/metrics/metrics_http_server.cc
  ${CMAKE_CURRENT_LIST_DIR}/metrics/server_metrics.cc)
target_include_directories(sage_metrics PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(sage_metrics PUBLIC absl::status absl::statusor absl::strings Threads::Threads)
sage_project_target(sage_metrics)

add_library(sage_batcher STATIC
  ${CMAKE_CURRENT_LIST_DIR}/scheduler/batch_assembler.cc
  ${CMAKE_CURRENT_LIST_DIR}/scheduler/dynamic_batcher.cc)
target_include_directories(sage_batcher PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(sage_batcher PUBLIC sage_reference sage_metrics absl::any_invocable
  absl::status absl::statusor absl::strings Threads::Threads)
sage_project_target(sage_batcher)
