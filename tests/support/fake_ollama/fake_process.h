// FakeOllamaProcess: the fake_ollama executable as a child process of a test
// or benchmark, with a client for its control endpoints (POST
// /_fake/settings, POST /_fake/reset, GET /_fake/stats; see fake_ollama.h).
// Every test and benchmark that needs a fake Ollama server in another
// process starts it through this class.
//
// Ownership: the object owns the child (SIGKILLed and reaped by the
// destructor when still running, and killed by the kernel if the test
// process dies first), the directory given to Start() only borrows a port
// file and a log file, and one libcurl easy handle for the control calls
// (kept alive, so control calls open one connection, not one per call;
// ControlConnections() says how many it opened). Not thread-safe: one
// thread drives the object. Needs curl_global_init() (libcurl does it on
// first use when no other thread uses libcurl at the same time).
#pragma once

#include <sys/types.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

typedef void CURL;

namespace digestd::testing {

class FakeOllamaProcess {
 public:
  FakeOllamaProcess() = default;
  ~FakeOllamaProcess();
  FakeOllamaProcess(const FakeOllamaProcess&) = delete;
  FakeOllamaProcess& operator=(const FakeOllamaProcess&) = delete;

  // Starts `binary` with `--port PORT --port-file DIR/fake.port` and
  // `flags`, its stdout and stderr appended to DIR/fake.log, and waits (up
  // to 10 s) until it has written its port. An empty `dir` means a fresh
  // directory under /tmp that the object removes (with the two files) when
  // it is destroyed. Returns "" on success, else what
  // went wrong with the log's tail. Port 0 picks a free port; a restart
  // after Stop() may pass port() to come back on the same one.
  std::string Start(const std::string& binary, const std::string& dir,
                    const std::vector<std::string>& flags = {}, int port = 0);

  // SIGTERM, then waits up to 10 s. "" when the fake exited with status 0;
  // else why not (it is SIGKILLed when it ignored SIGTERM). port() stays.
  std::string Stop();
  // SIGKILL and reap, when running.
  void Kill();
  // False once the child has exited (it is reaped then).
  bool Running();

  pid_t pid() const { return pid_; }
  int port() const { return port_; }
  std::string url() const;
  const std::string& log_path() const { return log_; }

  // One control call. On success, "" and *answer holds the parsed body
  // (null when it is not JSON); else what failed (no answer, or a status
  // other than 200 with the body).
  std::string Call(const std::string& method, const std::string& path, const nlohmann::json& body,
                   nlohmann::json* answer);
  // Merges `patch` into the fake's settings; "" or what failed.
  std::string Set(const nlohmann::json& patch);
  // Restores the start-up settings and zeroes the counters (ControlConnections()
  // too); "" or what failed.
  std::string Reset();
  // GET /_fake/stats; an empty object when the fake does not answer.
  nlohmann::json Stats();
  // requests_by_path[path] from Stats(); 0 when absent.
  uint64_t Requests(const std::string& path);
  // TCP connections this object's control calls opened.
  int64_t ControlConnections() const { return control_connections_; }
  // connections_accepted from Stats() minus ControlConnections(): the
  // connections everyone else (the daemon under test) opened.
  int64_t ForeignConnections();

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  std::string log_;
  std::string own_dir_;  // made by Start() for an empty `dir`; removed at the end
  CURL* control_ = nullptr;
  int64_t control_connections_ = 0;
};

}  // namespace digestd::testing
