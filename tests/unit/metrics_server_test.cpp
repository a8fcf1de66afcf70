// MetricsServer on a real loop: libmicrohttpd driven by a uv_poll and a
// uv_timer, scraped with libcurl from a client thread while the test's thread
// runs the loop (the handler runs there). Every handle is closed at the end
// (TestLoop checks uv_loop_close), and so is every descriptor.
#include "metrics/metrics_server.h"

#include <curl/curl.h>
#include <dirent.h>
#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>

#include "../support/test_loop.h"
#include "metrics/prom_text.h"

namespace digestd {
namespace {

using testing::TestLoop;

int OpenDescriptors() {
  int n = 0;
  DIR* d = opendir("/proc/self/fd");
  if (d == nullptr) return -1;
  while (readdir(d) != nullptr) ++n;
  closedir(d);
  return n;
}

struct HttpAnswer {
  long status = 0;
  std::string body;
  std::string content_type;
  std::string error;
};

// A blocking GET on the client thread.
HttpAnswer Get(const std::string& url, const char* method = "GET") {
  HttpAnswer a;
  CURL* curl = curl_easy_init();
  if (curl == nullptr) {
    a.error = "curl_easy_init failed";
    return a;
  }
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  if (std::string(method) == "HEAD") {
    curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
  } else {
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
  }
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 10000L);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(
      curl, CURLOPT_WRITEFUNCTION, +[](char* p, size_t size, size_t n, void* user) {
        static_cast<std::string*>(user)->append(p, size * n);
        return size * n;
      });
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &a.body);
  CURLcode rc = curl_easy_perform(curl);
  if (rc != CURLE_OK) {
    a.error = curl_easy_strerror(rc);
  } else {
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &a.status);
    char* ct = nullptr;
    curl_easy_getinfo(curl, CURLINFO_CONTENT_TYPE, &ct);
    if (ct != nullptr) a.content_type = ct;
  }
  curl_easy_cleanup(curl);
  return a;
}

// Runs `client` on a thread while the loop turns, until it has returned.
template <typename Fn>
void WhileLoopRuns(TestLoop& loop, Fn client) {
  std::atomic<bool> done{false};
  std::thread t([&] {
    client();
    done = true;
  });
  EXPECT_TRUE(loop.RunUntil([&] { return done.load(); }));
  t.join();
}

TEST(MetricsServer, ServesMetricsFromTheLoopThread) {
  // libcurl's and libuv's process-wide descriptors (opened on first use)
  // are not the server's.
  curl_global_init(CURL_GLOBAL_DEFAULT);
  Get("http://127.0.0.1:1/");
  { TestLoop warm; }
  int fds_before = OpenDescriptors();
  {
    TestLoop loop;
    std::thread::id handler_thread;
    int renders = 0;
    MetricsServer server(loop.get(), [&] {
      handler_thread = std::this_thread::get_id();
      ++renders;
      return std::string("# HELP x_total X.\n# TYPE x_total counter\nx_total ") +
             std::to_string(renders) + "\n";
    });
    ListenAddress addr;
    ASSERT_TRUE(ParseListenAddress("127.0.0.1:0", &addr).ok());
    ASSERT_TRUE(server.Start(addr).ok());
    ASSERT_NE(server.bound(), "127.0.0.1:0") << "port 0 is resolved to the bound port";
    const std::string base = "http://" + server.bound();

    HttpAnswer metrics, again, missing, head, post;
    WhileLoopRuns(loop, [&] {
      metrics = Get(base + "/metrics");
      again = Get(base + "/metrics");
      missing = Get(base + "/nothing");
      head = Get(base + "/metrics", "HEAD");
      post = Get(base + "/metrics", "POST");
    });
    ASSERT_EQ(metrics.error, "");
    EXPECT_EQ(metrics.status, 200);
    EXPECT_EQ(metrics.content_type, kPromContentType);
    EXPECT_EQ(metrics.body, "# HELP x_total X.\n# TYPE x_total counter\nx_total 1\n");
    EXPECT_EQ(again.body.substr(again.body.rfind(' ')), " 2\n") << "rendered per scrape";
    EXPECT_EQ(missing.status, 404);
    EXPECT_EQ(head.status, 200);
    EXPECT_EQ(post.status, 405);
    EXPECT_EQ(handler_thread, std::this_thread::get_id()) << "the handler ran off the loop";
    EXPECT_EQ(server.scrapes(), 3u);  // two GETs and a HEAD
    server.Close();
    server.Close();  // idempotent
  }
  EXPECT_EQ(OpenDescriptors(), fds_before) << "a socket or the epoll descriptor leaked";
}

TEST(MetricsServer, RenderExceptionIsA500) {
  TestLoop loop;
  MetricsServer server(loop.get(), []() -> std::string { throw std::runtime_error("boom"); });
  ListenAddress addr;
  ASSERT_TRUE(ParseListenAddress("127.0.0.1:0", &addr).ok());
  ASSERT_TRUE(server.Start(addr).ok());
  HttpAnswer a;
  WhileLoopRuns(loop, [&] { a = Get("http://" + server.bound() + "/metrics"); });
  EXPECT_EQ(a.status, 500);
  EXPECT_NE(a.body.find("boom"), std::string::npos);
}

TEST(MetricsServer, BindFailureNamesTheAddress) {
  TestLoop loop;
  MetricsServer first(loop.get(), [] { return std::string(); });
  ListenAddress addr;
  ASSERT_TRUE(ParseListenAddress("127.0.0.1:0", &addr).ok());
  ASSERT_TRUE(first.Start(addr).ok());
  // The same port again: in use.
  ListenAddress taken;
  ASSERT_TRUE(ParseListenAddress(first.bound(), &taken).ok());
  int fds_before = OpenDescriptors();
  MetricsServer second(loop.get(), [] { return std::string(); });
  Status st = second.Start(taken);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find(first.bound()), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("in use"), std::string::npos) << st.message();
  EXPECT_EQ(second.bound(), "");
  EXPECT_EQ(OpenDescriptors(), fds_before) << "a failed start left a descriptor open";
}

TEST(MetricsServer, ClosedServerRefusesConnections) {
  TestLoop loop;
  MetricsServer server(loop.get(), [] { return std::string("x 1\n"); });
  ListenAddress addr;
  ASSERT_TRUE(ParseListenAddress("127.0.0.1:0", &addr).ok());
  ASSERT_TRUE(server.Start(addr).ok());
  std::string url = "http://" + server.bound() + "/metrics";
  server.Close();
  loop.RunTurns();
  HttpAnswer a;
  WhileLoopRuns(loop, [&] { a = Get(url); });
  EXPECT_NE(a.error, "") << "connected to a closed server";
}

}  // namespace
}  // namespace digestd
