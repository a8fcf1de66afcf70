#include "pg_session.h"

namespace digestd::testing {

PgSession::PgSession(const std::string& conninfo) : conn_(PQconnectdb(conninfo.c_str())) {
  if (PQstatus(conn_) != CONNECTION_OK) {
    status_ = Status::Unavailable(PQerrorMessage(conn_));
    return;
  }
  PQsetNoticeProcessor(
      conn_, [](void*, const char*) {}, nullptr);
}

PgSession::~PgSession() {
  PQfinish(conn_);
}

Result<Rows> PgSession::Exec(const std::string& sql) {
  if (!status_.ok()) return status_;
  PGresult* res = PQexec(conn_, sql.c_str());
  ExecStatusType st = PQresultStatus(res);
  if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
    std::string why = PQresultErrorMessage(res);
    if (why.empty()) why = PQerrorMessage(conn_);
    PQclear(res);
    return Status::Internal(why + " (in: " + sql + ")");
  }
  Rows rows;
  for (int r = 0; r < PQntuples(res); ++r) {
    std::vector<std::string> row;
    for (int c = 0; c < PQnfields(res); ++c) row.emplace_back(PQgetvalue(res, r, c));
    rows.push_back(std::move(row));
  }
  PQclear(res);
  return rows;
}

int PgSession::BackendPid() const {
  return status_.ok() ? PQbackendPID(conn_) : 0;
}

}  // namespace digestd::testing
