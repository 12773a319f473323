"""Persistent state behind one interface: the schema, its migrations, every SQL statement.

`base` states the interface (`Store`, `ReportQueries`) and the rows it takes; `sqlite` and
its `sqlite_*` siblings implement it for SQLite, `postgres` and its `postgres_*` siblings for
PostgreSQL (psycopg 3); `factory.open_store` chooses from `--db` / MAILCTL_DB.
Nothing outside this package writes SQL. Imports only mailctl.errors: every other package
sits above the store.
"""
