// The only C++ in cardet-c10d: a C ABI over libtorch's c10d, so Rust can build a
// process group (TCPStore + ProcessGroupGloo, or ProcessGroupNCCL with the `cuda`
// feature) and run collectives on tch tensors without copying them.
//
// Why C++ at all: tch exposes no c10d, and c10d's API is C++ classes
// (intrusive_ptr, std::vector<at::Tensor>, exceptions). This file is the smallest
// layer that turns those into plain functions.
//
// The FFI error rule: no C++ exception may cross into Rust (that is undefined
// behaviour and in practice an abort). Every exported function is `noexcept`,
// runs its body inside `guarded`, and reports failure by returning a heap string
// (free it with `cardet_c10d_error_free`); NULL means success. Nothing here
// prints, aborts or exits.
//
// Timeouts: every collective is given the caller's per-operation timeout twice:
// as the c10d option (so gloo's own socket reads give up and the work fails) and
// as a deadline on `Work::wait` (so even a work that never finishes cannot hang
// the caller). A timed-out work keeps its own references to the tensors, so
// returning early never leaves gloo writing into freed memory.
//
// Tensors arrive as `at::Tensor*` (`torch::Tensor` is the same type), which is
// what tch's `Tensor::as_ptr()` points at (torch-sys' libtch/torch_api.h:
// `typedef torch::Tensor *tensor;`).

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <ATen/ATen.h>

#ifdef CARDET_C10D_CUDA
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace {

// Backend selectors shared with src/ffi.rs.
constexpr int kBackendGloo = 0;
constexpr int kBackendNccl = 1;

// Reduction selectors shared with src/ffi.rs.
constexpr int kReduceSum = 0;
constexpr int kReduceAverage = 1;

}  // namespace

// Opaque to Rust: the store must outlive the backend, which reads it during
// rendezvous and for gloo's lazy connections.
struct cardet_c10d_group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  int rank;
  int world_size;
  std::chrono::milliseconds timeout;
};

namespace {

// Returned when the message itself cannot be allocated: NULL would read as
// success. cardet_c10d_error_free knows not to free it.
char kOutOfMemory[] = "out of memory while reporting a c10d error";

char* copy_message(const std::string& message) {
  // malloc, not new: cardet_c10d_error_free is the only reader and uses free.
  char* copy = static_cast<char*>(std::malloc(message.size() + 1));
  if (copy == nullptr) {
    return kOutOfMemory;
  }
  std::memcpy(copy, message.c_str(), message.size() + 1);
  return copy;
}

// c10::Error's what() carries a C++ backtrace after the first line; the message
// users need is the part before it.
std::string without_backtrace(const c10::Error& error) {
  return error.what_without_backtrace();
}

template <typename Body>
char* guarded(Body&& body) noexcept {
  try {
    body();
    return nullptr;
  } catch (const c10::Error& error) {
    return copy_message(without_backtrace(error));
  } catch (const std::exception& error) {
    return copy_message(error.what());
  } catch (...) {
    return copy_message("unknown C++ exception");
  }
}

std::vector<at::Tensor> tensors_from(at::Tensor* const* tensors, size_t n_tensors) {
  std::vector<at::Tensor> list;
  list.reserve(n_tensors);
  for (size_t tensor_idx = 0; tensor_idx < n_tensors; ++tensor_idx) {
    TORCH_CHECK(tensors[tensor_idx] != nullptr, "tensor ", tensor_idx, " is null");
    list.push_back(*tensors[tensor_idx]);
  }
  return list;
}

// Waits for every work, even after one failed, so that no work is still running
// when the caller gets its answer (unless the deadline passed). The first
// failure is the one reported.
void wait_all(
    std::vector<c10::intrusive_ptr<c10d::Work>>& works,
    std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::exception_ptr first_failure;
  for (auto& work : works) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    // A zero timeout means "no timeout" to c10d; one millisecond still checks.
    if (left < std::chrono::milliseconds(1)) {
      left = std::chrono::milliseconds(1);
    }
    try {
      work->wait(left);
    } catch (...) {
      if (!first_failure) {
        // c10d's own text for a passed deadline is a bare "Operation timed
        // out!"; say what it means for a job.
        first_failure = work->isCompleted()
            ? std::current_exception()
            : std::make_exception_ptr(std::runtime_error(
                  "no result within the " + std::to_string(timeout.count()) +
                  " ms timeout; a peer rank is stalled, dead or not issuing the same collective"));
      }
    }
  }
  if (first_failure) {
    std::rethrow_exception(first_failure);
  }
}

}  // namespace

extern "C" {

void cardet_c10d_error_free(char* error) noexcept;

// Connects to (rank 0: hosts) the TCPStore at master_addr:master_port, waits
// for all world_size ranks, then builds the backend. timeout_ms bounds the
// rendezvous and every later collective. gloo_interface may be NULL or empty;
// otherwise gloo binds to that network interface (GLOO_SOCKET_IFNAME).
char* cardet_c10d_group_new(
    const char* master_addr,
    uint16_t master_port,
    int rank,
    int world_size,
    int64_t timeout_ms,
    int backend,
    const char* gloo_interface,
    cardet_c10d_group** out) noexcept {
  return guarded([&] {
    TORCH_CHECK(out != nullptr, "output pointer is null");
    *out = nullptr;
    TORCH_CHECK(master_addr != nullptr, "master address is null");
    TORCH_CHECK(world_size >= 1, "world size ", world_size, " is below 1");
    TORCH_CHECK(rank >= 0 && rank < world_size, "rank ", rank, " is outside 0..", world_size);
    TORCH_CHECK(timeout_ms > 0, "timeout must be positive, got ", timeout_ms, " ms");
    const auto timeout = std::chrono::milliseconds(timeout_ms);

    c10d::TCPStoreOptions store_options;
    store_options.port = master_port;
    store_options.isServer = rank == 0;
    store_options.numWorkers = static_cast<size_t>(world_size);
    store_options.waitWorkers = true;
    store_options.timeout = timeout;
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(master_addr), store_options);

    c10::intrusive_ptr<c10d::Backend> process_group;
    if (backend == kBackendGloo) {
      auto options = c10d::ProcessGroupGloo::Options::create(timeout);
      if (gloo_interface != nullptr && gloo_interface[0] != '\0') {
        options->devices.push_back(
            c10d::ProcessGroupGloo::createDeviceForInterface(gloo_interface));
      } else {
        options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      process_group = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world_size, options);
    } else if (backend == kBackendNccl) {
#ifdef CARDET_C10D_CUDA
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      process_group = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world_size, options);
#else
      TORCH_CHECK(false, "NCCL backend requested, but cardet-c10d was built without the `cuda` feature");
#endif
    } else {
      TORCH_CHECK(false, "unknown backend selector ", backend);
    }

    *out = new cardet_c10d_group{store, process_group, rank, world_size, timeout};
  });
}

// All-reduces each tensor in place (each is its own collective, issued together
// so the backend can overlap them). kReduceAverage sums and then divides, since
// gloo has no native average.
char* cardet_c10d_all_reduce(
    cardet_c10d_group* group,
    at::Tensor* const* tensors,
    size_t n_tensors,
    int reduce_op) noexcept {
  return guarded([&] {
    TORCH_CHECK(group != nullptr, "process group is null");
    TORCH_CHECK(
        reduce_op == kReduceSum || reduce_op == kReduceAverage,
        "unknown reduce op selector ", reduce_op);
    auto list = tensors_from(tensors, n_tensors);
    c10d::AllreduceOptions options;
    options.reduceOp = c10d::ReduceOp::SUM;
    options.timeout = group->timeout;
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    works.reserve(list.size());
    for (auto& tensor : list) {
      // c10d's vector is one tensor per device replica, not a list of tensors.
      std::vector<at::Tensor> single{tensor};
      works.push_back(group->backend->allreduce(single, options));
    }
    wait_all(works, group->timeout);
    if (reduce_op == kReduceAverage) {
      // The tensors may be leaves that require grad (parameters); the division
      // is data movement, not part of any graph.
      at::AutoGradMode no_grad(false);
      for (auto& tensor : list) {
        tensor.div_(group->world_size);
      }
    }
  });
}

// Overwrites each tensor with root's copy.
char* cardet_c10d_broadcast(
    cardet_c10d_group* group,
    at::Tensor* const* tensors,
    size_t n_tensors,
    int root) noexcept {
  return guarded([&] {
    TORCH_CHECK(group != nullptr, "process group is null");
    TORCH_CHECK(
        root >= 0 && root < group->world_size,
        "root rank ", root, " is outside 0..", group->world_size);
    auto list = tensors_from(tensors, n_tensors);
    c10d::BroadcastOptions options;
    options.rootRank = root;
    options.timeout = group->timeout;
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    works.reserve(list.size());
    for (auto& tensor : list) {
      std::vector<at::Tensor> single{tensor};
      works.push_back(group->backend->broadcast(single, options));
    }
    wait_all(works, group->timeout);
  });
}

// Returns once every rank has entered the barrier.
char* cardet_c10d_barrier(cardet_c10d_group* group) noexcept {
  return guarded([&] {
    TORCH_CHECK(group != nullptr, "process group is null");
    c10d::BarrierOptions options;
    options.timeout = group->timeout;
    std::vector<c10::intrusive_ptr<c10d::Work>> works{group->backend->barrier(options)};
    wait_all(works, group->timeout);
  });
}

// Destroys the backend before the store it reads. Errors from tear-down are
// dropped: there is nobody left to tell, and tear-down must not abort.
void cardet_c10d_group_free(cardet_c10d_group* group) noexcept {
  if (group == nullptr) {
    return;
  }
  char* error = guarded([&] {
    group->backend.reset();
    group->store.reset();
  });
  cardet_c10d_error_free(error);
  delete group;
}

void cardet_c10d_error_free(char* error) noexcept {
  if (error != kOutOfMemory) {
    std::free(error);
  }
}

}  // extern "C"
