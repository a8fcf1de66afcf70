#include "app/migrate_only.h"

#include <uv.h>

#include "obs/log.h"
#include "store/migrations.h"
#include "store/pg_conn.h"
#include "util/uv_handle.h"

namespace digestd {

int RunMigrateOnly(const Config& config) {
  uv_loop_t loop;
  if (uv_loop_init(&loop) != 0) {
    LOG_ERROR("cannot start: uv_loop_init failed");
    return 1;
  }
  int code = 1;
  {
    PgConnOptions po;
    po.conninfo = config.postgres.conninfo;
    po.connect_timeout_ms = config.postgres.connect_timeout_s * 1000;
    PgConn conn(&loop, po);
    UvHandle<uv_timer_t> deadline;
    bool finished = false;
    auto finish = [&](int rc) {
      if (finished) return;
      finished = true;
      code = rc;
      deadline.Close();
      conn.Close();
    };
    conn.AddStateObserver([&](bool up, const Status&) {
      if (!up || finished) return;
      Status st = Migrate(conn, [&](Status result) {
        if (result.ok()) {
          LOG_NOTICE("schema digestd is at version %d on %s", kSchemaVersion,
                     conn.Describe().c_str());
          finish(0);
        } else {
          LOG_ERROR("migration failed on %s: %s", conn.Describe().c_str(),
                    result.message().c_str());
          finish(1);
        }
      });
      if (!st.ok()) {
        LOG_ERROR("migration not sent: %s", st.message().c_str());
        finish(1);
      }
    });
    if (uv_timer_init(&loop, deadline.get()) == 0) {
      deadline.set_initialized();
      deadline.get()->data = &finish;
      // Two connect attempts' worth, so one quick retry fits.
      uint64_t ms = static_cast<uint64_t>(config.postgres.connect_timeout_s) * 2000 + 1000;
      uv_timer_start(
          deadline.get(),
          [](uv_timer_t* t) {
            auto* fin = static_cast<decltype(finish)*>(t->data);
            (*fin)(2);
          },
          ms, 0);
    }
    if (!conn.init_status().ok()) {
      LOG_ERROR("cannot start: %s", conn.init_status().message().c_str());
      finish(1);
    } else {
      conn.Start();
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    if (code == 2) {
      std::string err = conn.state().last_error;
      // A hint from the connect error says what to fix; the generic advice
      // only when there is none.
      const bool hinted = err.find("; ") != std::string::npos;
      LOG_ERROR("could not reach PostgreSQL at %s within %d s: %s%s", conn.Describe().c_str(),
                config.postgres.connect_timeout_s * 2, err.empty() ? "no answer" : err.c_str(),
                hinted ? "" : "; check [postgres] conninfo and that the server runs");
      code = 1;
    }
    conn.Close();
    while (uv_run(&loop, UV_RUN_DEFAULT) != 0) {
    }
  }
  while (uv_run(&loop, UV_RUN_DEFAULT) != 0) {
  }
  if (uv_loop_close(&loop) != 0) LOG_ERROR("the loop still had open handles at exit");
  return code;
}

}  // namespace digestd
