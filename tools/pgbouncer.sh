#!/usr/bin/env bash
# PgBouncer in transaction mode on 127.0.0.1:6432 in front of the PostgreSQL at 127.0.0.1:5432,
# as production runs it (the CI's pooler stage): `tools/pgbouncer.sh start` / `stop`.
# Needs Debian's pgbouncer (apt-get install pgbouncer). Files under var/pgbouncer.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="$PWD/var/pgbouncer"
port="${PGBOUNCER_PORT:-6432}"

case "${1:-}" in
start)
    mkdir -p "$dir"
    echo '"postgres" ""' > "$dir/userlist.txt"
    cat > "$dir/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=5432

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
admin_users = postgres
pool_mode = transaction
max_client_conn = 1000
default_pool_size = 60
; what a pooler does to startup parameters: drops them (Lockstep must not rely on them)
ignore_startup_parameters = extra_float_digits,options
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
INI
    # PgBouncer refuses to run as root: drop to the postgres user the Debian package brings.
    if [ "$(id -u)" = 0 ]; then chown -R postgres "$dir"; as_user=(-u postgres); else as_user=(); fi
    pgbouncer -d "${as_user[@]}" "$dir/pgbouncer.ini"
    for _ in $(seq 50); do
        if .venv/bin/python -c "import psycopg; psycopg.connect('postgresql://postgres@127.0.0.1:$port/postgres', connect_timeout=1).close()" 2>/dev/null; then
            exit 0
        fi
        sleep 0.1
    done
    echo "pgbouncer did not start; see $dir/pgbouncer.log" >&2
    exit 1
    ;;
stop)
    if [ -f "$dir/pgbouncer.pid" ]; then kill "$(cat "$dir/pgbouncer.pid")" 2>/dev/null || true; fi
    for _ in $(seq 50); do [ -f "$dir/pgbouncer.pid" ] || exit 0; sleep 0.1; done
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
