// `digestd --migrate-only`: connects to [postgres] conninfo, brings schema
// digestd up to date (store/migrations.h) and exits, for an installer or a
// deploy step that migrates before any daemon starts.
//
// Runs its own libuv loop on the calling thread; returns once done.
#pragma once

#include "config/config.h"

namespace digestd {

// Returns the process exit code: 0 when the schema is at the version this
// build knows (already or now), 1 when the database could not be reached
// within [postgres] connect_timeout_s or a migration failed (logged).
int RunMigrateOnly(const Config& config);

}  // namespace digestd
