// digestd: argument parsing and wiring only; the daemon lives in lib/app.
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "app/daemon.h"
#include "app/migrate_only.h"
#include "backend/ollama_client.h"
#include "config/config.h"
#include "control/peer_access.h"
#include "obs/log.h"
#include "store/pg_conn.h"

namespace {

constexpr const char* kDefaultConfig = "/etc/digestd/digestd.conf";

void Usage(FILE* out) {
  std::fprintf(out,
               "usage: digestd [--config PATH] [--check-config] [--print-config]\n"
               "               [--migrate-only] [--version] [--help]\n"
               "\n"
               "Runs LLM side-work (summaries, embeddings, generations) off the critical path\n"
               "of the apps that submit it over a Unix socket. Always runs in the foreground;\n"
               "systemd (Type=notify) or a shell supervises it.\n"
               "\n"
               "  --config PATH    config file (default %s; built-in defaults\n"
               "                   when that file does not exist)\n"
               "  --check-config   validate the config file and exit 0 (valid) or 1\n"
               "  --print-config   print the effective config as TOML and exit\n"
               "  --migrate-only   create or update schema digestd in [postgres] conninfo\n"
               "                   and exit 0 (done) or 1\n"
               "  --version        print the version and exit\n"
               "  --help           this text\n",
               kDefaultConfig);
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path;
  bool check = false, print = false, migrate_only = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--config" || a == "-c") {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "digestd: --config needs a path\n");
        return 2;
      }
      config_path = argv[++i];
    } else if (a.rfind("--config=", 0) == 0) {
      config_path = a.substr(9);
    } else if (a == "--check-config") {
      check = true;
    } else if (a == "--print-config") {
      print = true;
    } else if (a == "--migrate-only") {
      migrate_only = true;
    } else if (a == "--version" || a == "-V") {
      std::printf("digestd %s\n", DIGESTD_VERSION);
      return 0;
    } else if (a == "--help" || a == "-h") {
      Usage(stdout);
      return 0;
    } else {
      std::fprintf(stderr, "digestd: unknown argument '%s'; see digestd --help\n", a.c_str());
      return 2;
    }
  }

  digestd::InitLogging("digestd");
  digestd::OllamaClient::GlobalInit();  // before any pool thread exists
  digestd::Config config;
  if (config_path.empty() && access(kDefaultConfig, F_OK) == 0) config_path = kDefaultConfig;
  if (!config_path.empty()) {
    auto loaded = digestd::LoadConfigFile(config_path);
    if (!loaded.ok()) {
      std::fprintf(stderr, "digestd: %s\n", loaded.status().message().c_str());
      return 1;
    }
    config = std::move(loaded).value();
  }
  if (print) {
    digestd::Config shown = config;  // never print a password
    shown.postgres.conninfo = digestd::RedactConninfo(shown.postgres.conninfo);
    std::fputs(digestd::DumpConfig(shown).c_str(), stdout);
    return 0;
  }
  // What the file's syntax cannot show: a conninfo libpq cannot parse, and
  // allow-lists that a user namespace (PrivateUsers=) makes unusable.
  const char* origin = config_path.empty() ? "(built-in defaults)" : config_path.c_str();
  digestd::Status st =
      digestd::CheckAllowListsVisible(config.control.allow_uids, config.control.allow_gids);
  if (st.ok() && (config.jobs.store == "postgres" || migrate_only)) {
    st = digestd::ValidateConninfo(config.postgres.conninfo);
  }
  if (!st.ok()) {
    std::fprintf(stderr, "digestd: %s: %s\n", origin, st.message().c_str());
    return 1;
  }
  if (check) {
    std::printf("%s: ok\n", origin);
    return 0;
  }
  if (migrate_only) return digestd::RunMigrateOnly(config);
  if (config_path.empty()) {
    LOG_NOTICE("no config file at %s; running on built-in defaults", kDefaultConfig);
  }
  digestd::Daemon daemon(std::move(config), config_path);
  return daemon.Run();
}
