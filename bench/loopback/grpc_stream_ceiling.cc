// How many small messages this build's gRPC (Debian's 1.51) moves through bidirectional streams on
// one host, by server API: the callback API, which sageserve uses (every reaction and its polling
// on one process-wide queue served by cores/2 threads), against the async API with one completion
// queue per thread. The server echoes each message; the client keeps `in_flight` messages in flight
// on each of `streams` streams, each stream on its own connection, with the async API on `cqs`
// threads. No protobuf, no batcher, no GPU: the transport's own ceiling for sageserve's tiny requests.
//
//   grpc_stream_ceiling server --listen=127.0.0.1:50300 --api=callback|async [--cqs=N]
//   grpc_stream_ceiling client --target=127.0.0.1:50300 [--streams=16] [--in_flight=16]
//                              [--messages=500000] [--bytes=256] [--cqs=8]
// The client prints messages/s and round-trip p50/p99 per message.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "grpcpp/generic/async_generic_service.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"

namespace {

using Clock = std::chrono::steady_clock;
constexpr char kMethod[] = "/sageserve.bench.Echo/Stream";

std::map<std::string, std::string> ParseFlags(int argc, char** argv) {
  std::map<std::string, std::string> flags;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0) continue;
    const size_t eq = a.find('=');
    flags[a.substr(2, eq == std::string::npos ? std::string::npos : eq - 2)] =
        eq == std::string::npos ? "1" : a.substr(eq + 1);
  }
  return flags;
}

long Flag(const std::map<std::string, std::string>& f, const std::string& name, long fallback) {
  auto it = f.find(name);
  return it == f.end() ? fallback : std::atol(it->second.c_str());
}

grpc::ByteBuffer Bytes(size_t n) {
  std::string payload(n, 'x');
  grpc::Slice slice(payload);
  return grpc::ByteBuffer(&slice, 1);
}

// ---- server, callback API: the same read/queue/one-write-at-a-time shape as AttendStreamReactor.
class EchoReactor final : public grpc::ServerGenericBidiReactor {
 public:
  EchoReactor() { StartRead(&in_); }
  void OnReadDone(bool ok) override {
    grpc::ByteBuffer* next = nullptr;
    bool finish = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!ok) {
        reads_done_ = true;
        finish = !writing_ && !finished_;
        finished_ = finished_ || finish;
      } else {
        out_.push_back(std::move(in_));
        if (!writing_) {
          writing_ = true;
          next = &out_.front();
        }
      }
    }
    if (finish) Finish(grpc::Status::OK);
    if (!ok) return;
    in_.Clear();
    StartRead(&in_);
    if (next != nullptr) StartWrite(next);
  }
  void OnWriteDone(bool ok) override {
    grpc::ByteBuffer* next = nullptr;
    bool finish = false;
    grpc::WriteOptions options;
    {
      std::lock_guard<std::mutex> lock(mu_);
      out_.pop_front();
      writing_ = ok && !out_.empty();
      if (writing_) {
        next = &out_.front();
        if (out_.size() > 1) options.set_buffer_hint();
      }
      finish = !writing_ && (reads_done_ || !ok) && !finished_;
      finished_ = finished_ || finish;
    }
    if (next != nullptr) StartWrite(next, options);
    if (finish) Finish(grpc::Status::OK);
  }
  void OnDone() override { delete this; }

 private:
  grpc::ByteBuffer in_;
  std::mutex mu_;
  std::deque<grpc::ByteBuffer> out_;
  bool writing_ = false, reads_done_ = false, finished_ = false;
};

class CallbackEcho final : public grpc::CallbackGenericService {
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext*) override {
    return new EchoReactor();
  }
};

// ---- server, async API: every event of a call arrives on its own queue's one thread: no locks.
struct AsyncCall;
struct Tag {
  AsyncCall* call;
  enum Kind { kNew, kRead, kWrite, kFinish } kind;
};
struct AsyncCall {
  AsyncCall(grpc::AsyncGenericService* service, grpc::ServerCompletionQueue* cq)
      : service(service), cq(cq), stream(&ctx) {
    service->RequestCall(&ctx, &stream, cq, cq, &new_tag);
  }
  void Proceed(Tag::Kind kind, bool ok) {
    switch (kind) {
      case Tag::kNew:
        if (!ok) { delete this; return; }
        new AsyncCall(service, cq);  // accept the next call on this queue
        stream.Read(&in, &read_tag);
        return;
      case Tag::kRead:
        if (!ok) {
          reads_done = true;
          MaybeFinish();
          return;
        }
        out.push_back(std::move(in));
        in.Clear();
        if (!writing) StartWrite();
        stream.Read(&in, &read_tag);
        return;
      case Tag::kWrite:
        out.pop_front();
        writing = false;
        if (ok && !out.empty()) StartWrite();
        else MaybeFinish();
        return;
      case Tag::kFinish:
        delete this;
        return;
    }
  }
  void StartWrite() {
    writing = true;
    grpc::WriteOptions options;
    if (out.size() > 1) options.set_buffer_hint();
    stream.Write(out.front(), options, &write_tag);
  }
  void MaybeFinish() {
    if (writing || !reads_done || finishing) return;
    finishing = true;
    stream.Finish(grpc::Status::OK, &finish_tag);
  }

  grpc::AsyncGenericService* service;
  grpc::ServerCompletionQueue* cq;
  grpc::GenericServerContext ctx;
  grpc::GenericServerAsyncReaderWriter stream;
  grpc::ByteBuffer in;
  std::deque<grpc::ByteBuffer> out;
  bool writing = false, reads_done = false, finishing = false;
  Tag new_tag{this, Tag::kNew}, read_tag{this, Tag::kRead}, write_tag{this, Tag::kWrite},
      finish_tag{this, Tag::kFinish};
};

void DrainQueue(grpc::CompletionQueue* cq) {
  void* tag;
  bool ok;
  while (cq->Next(&tag, &ok)) {
    Tag* t = static_cast<Tag*>(tag);
    t->call->Proceed(t->kind, ok);
  }
}

std::atomic<bool> g_stop{false};

int RunServer(const std::map<std::string, std::string>& f) {
  const std::string listen = f.count("listen") ? f.at("listen") : "127.0.0.1:50300";
  const std::string api = f.count("api") ? f.at("api") : "callback";
  const int cqs = static_cast<int>(Flag(f, "cqs", 8));
  grpc::ServerBuilder builder;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials());
  CallbackEcho callback_service;
  grpc::AsyncGenericService async_service;
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues;
  if (api == "callback") {
    builder.RegisterCallbackGenericService(&callback_service);
  } else if (api == "async") {
    builder.RegisterAsyncGenericService(&async_service);
    for (int i = 0; i < cqs; ++i) queues.push_back(builder.AddCompletionQueue());
  } else {
    std::fprintf(stderr, "--api: callback or async\n");
    return 2;
  }
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server) {
    std::fprintf(stderr, "cannot listen on %s\n", listen.c_str());
    return 1;
  }
  std::vector<std::thread> threads;
  for (auto& q : queues) {
    for (int i = 0; i < 8; ++i) new AsyncCall(&async_service, q.get());  // calls accepted ahead
    threads.emplace_back([cq = q.get()] { DrainQueue(cq); });
  }
  std::printf("grpc_stream_ceiling server (%s%s) on %s\n", api.c_str(),
              api == "async" ? (", " + std::to_string(cqs) + " queues").c_str() : "", listen.c_str());
  std::fflush(stdout);
  std::signal(SIGTERM, [](int) { g_stop = true; });
  std::signal(SIGINT, [](int) { g_stop = true; });
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  for (auto& q : queues) q->Shutdown();
  for (auto& t : threads) t.join();
  return 0;
}

// ---- client, async API: each stream keeps in_flight messages outstanding until its quota is sent.
struct ClientStream;
struct ClientTag {
  ClientStream* s;
  enum Kind { kStart, kRead, kWrite, kWritesDone, kFinish } kind;
};
struct ClientStream {
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call;
  grpc::ByteBuffer payload, in;
  std::deque<Clock::time_point> sent_at;  // echoes come back in order
  long to_send = 0, queued = 0, received = 0;
  bool writing = false, closing = false;
  grpc::Status status;
  std::vector<double> rtt_us;
  std::atomic<bool>* done = nullptr;
  ClientTag start{this, ClientTag::kStart}, read{this, ClientTag::kRead}, write{this, ClientTag::kWrite},
      writes_done{this, ClientTag::kWritesDone}, finish{this, ClientTag::kFinish};

  void Send() {
    ++queued;
    --to_send;
    if (!writing) WriteOne();
  }
  void WriteOne() {
    writing = true;
    sent_at.push_back(Clock::now());
    grpc::WriteOptions options;
    if (queued > 1) options.set_buffer_hint();
    call->Write(payload, options, &write);
  }
  void Proceed(ClientTag::Kind kind, bool ok, long in_flight, long quota) {
    switch (kind) {
      case ClientTag::kStart:
        to_send = quota;
        for (long i = 0; i < in_flight && to_send > 0; ++i) Send();
        call->Read(&in, &read);
        return;
      case ClientTag::kWrite:
        --queued;
        writing = false;
        if (ok && queued > 0) WriteOne();
        else if (closing && queued == 0) call->WritesDone(&writes_done);
        return;
      case ClientTag::kRead:
        if (!ok) { call->Finish(&status, &finish); return; }
        rtt_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - sent_at.front()).count());
        sent_at.pop_front();
        ++received;
        if (to_send > 0) {
          Send();
        } else if (received == quota && !closing) {
          closing = true;
          if (!writing) call->WritesDone(&writes_done);
        }
        call->Read(&in, &read);
        return;
      case ClientTag::kWritesDone:
        return;
      case ClientTag::kFinish:
        done->store(true);
        return;
    }
  }
};

int RunClient(const std::map<std::string, std::string>& f) {
  const std::string target = f.count("target") ? f.at("target") : "127.0.0.1:50300";
  const long streams = Flag(f, "streams", 16), in_flight = Flag(f, "in_flight", 16);
  const long messages = Flag(f, "messages", 500000), bytes = Flag(f, "bytes", 256);
  const int ncq = static_cast<int>(Flag(f, "cqs", 8));
  const long quota = messages / streams;
  std::vector<std::unique_ptr<grpc::CompletionQueue>> cqs;
  for (int i = 0; i < ncq; ++i) cqs.push_back(std::make_unique<grpc::CompletionQueue>());
  std::vector<std::unique_ptr<ClientStream>> all;
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  std::vector<std::unique_ptr<grpc::GenericStub>> stubs;
  std::vector<std::atomic<bool>> done(static_cast<size_t>(streams));
  const Clock::time_point t0 = Clock::now();
  for (long s = 0; s < streams; ++s) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a connection of its own per stream
    channels.push_back(grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args));
    stubs.push_back(std::make_unique<grpc::GenericStub>(channels.back()));
    auto st = std::make_unique<ClientStream>();
    st->payload = Bytes(static_cast<size_t>(bytes));
    st->done = &done[static_cast<size_t>(s)];
    st->call = stubs.back()->PrepareCall(&st->ctx, kMethod, cqs[static_cast<size_t>(s % ncq)].get());
    st->call->StartCall(&st->start);
    all.push_back(std::move(st));
  }
  std::vector<std::thread> threads;
  for (auto& q : cqs) {
    threads.emplace_back([cq = q.get(), in_flight, quota] {
      void* tag;
      bool ok;
      while (cq->Next(&tag, &ok)) {
        ClientTag* t = static_cast<ClientTag*>(tag);
        t->s->Proceed(t->kind, ok, in_flight, quota);
      }
    });
  }
  for (auto& d : done) {
    while (!d.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
  for (auto& q : cqs) q->Shutdown();
  for (auto& t : threads) t.join();
  std::vector<double> rtt;
  long received = 0, failed = 0;
  for (auto& st : all) {
    received += st->received;
    if (!st->status.ok()) ++failed;
    rtt.insert(rtt.end(), st->rtt_us.begin(), st->rtt_us.end());
  }
  std::sort(rtt.begin(), rtt.end());
  const auto pct = [&](double p) { return rtt.empty() ? 0.0 : rtt[std::min(rtt.size() - 1, size_t(p * rtt.size()))]; };
  std::printf("streams %ld x %ld in flight, %ld-byte messages: %ld echoed in %.3f s = %.0f msg/s; "
              "round trip us p50 %.0f p99 %.0f; %ld streams failed\n",
              streams, in_flight, bytes, received, wall, static_cast<double>(received) / wall, pct(0.5), pct(0.99),
              failed);
  return failed == 0 && received == quota * streams ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || (std::string(argv[1]) != "server" && std::string(argv[1]) != "client")) {
    std::fprintf(stderr, "usage: grpc_stream_ceiling server|client [--flags]\n");
    return 2;
  }
  const auto flags = ParseFlags(argc, argv);
  return std::string(argv[1]) == "server" ? RunServer(flags) : RunClient(flags);
}
