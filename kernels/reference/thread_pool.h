// A fixed pool of worker threads with a blocking parallel-for, shared by concurrent callers.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace sage {

class ThreadPool {
 public:
  explicit ThreadPool(int num_threads);  // worker threads; 0 runs everything on the caller
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()); }

  // Calls fn(i) for every i in [0, n) and returns when all calls have finished. The calling thread
  // takes items too, so nested or concurrent callers always make progress. Items are claimed
  // dynamically; fn must not depend on which thread runs it.
  void ParallelFor(int64_t n, const std::function<void(int64_t)>& fn);

 private:
  void WorkerLoop();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace sage
