# Local PostgreSQL server: a private cluster from Debian's packages, separate
# from Debian's own "main" cluster, listening on loopback TCP only.
# Sourced by scripts/services, which defines say, warn, die, the deadline
# helpers, STATE_DIR and the timeouts.

# Role and databases the application and the test suite connect to. The
# application's default URL is postgresql+psycopg://sentinel@127.0.0.1:15432/sentinel.
PG_APP_ROLE="sentinel"
PG_APP_DATABASES=(sentinel sentinel_test)
PG_SUPERUSER="postgres"
# Debian's postgresql-NN packages install their binaries in NN/bin below this.
PG_DEBIAN_LIB_DIR="/usr/lib/postgresql"

postgres_configure() {
    PG_PORT="${SENTINEL_PG_PORT:-15432}"
    require_whole_number SENTINEL_PG_PORT "$PG_PORT"
    PG_OS_USER="${SENTINEL_PG_OS_USER:-postgres}"
    PG_BIN_DIR="${SENTINEL_PG_BIN_DIR:-}"
    PG_DIR="${SENTINEL_PG_DIR:-}"
}

# Finds the newest server binaries installed by Debian's postgresql-NN packages.
postgres_find_bin_dir() {
    local candidate
    if [[ -n "$PG_BIN_DIR" ]]; then
        [[ -x "$PG_BIN_DIR/initdb" ]] || die "SENTINEL_PG_BIN_DIR=$PG_BIN_DIR contains no initdb"
        return 0
    fi
    candidate="$(find "$PG_DEBIAN_LIB_DIR" -mindepth 3 -maxdepth 3 -path '*/bin/initdb' 2>/dev/null | sort -V | tail -n 1 || true)"
    if [[ -n "$candidate" ]]; then
        PG_BIN_DIR="$(dirname "$candidate")"
    elif candidate="$(command -v initdb)"; then
        PG_BIN_DIR="$(dirname "$(readlink -f "$candidate")")"
    fi
}

# Installs Debian's postgresql package when no server binaries are found.
postgres_install() {
    postgres_find_bin_dir
    [[ -n "$PG_BIN_DIR" ]] && return 0

    apt_install "PostgreSQL's initdb and pg_ctl (SENTINEL_PG_BIN_DIR can name their folder)" postgresql
    postgres_find_bin_dir
    [[ -n "$PG_BIN_DIR" ]] || die "apt-get installed postgresql, but no initdb was found under $PG_DEBIAN_LIB_DIR; set SENTINEL_PG_BIN_DIR"
}

# initdb and postgres exit with an error when started as root, so as root they run as PG_OS_USER.
postgres_as_server_user() {
    if [[ "$(id -u)" -eq 0 ]]; then
        # Start in / because the server user may not be allowed into the caller's folder.
        (cd / && runuser -u "$PG_OS_USER" -- "$@")
    else
        "$@"
    fi
}

postgres_server_user_can_write() {
    local dir="$1"
    postgres_as_server_user test -d "$dir" -a -w "$dir" -a -x "$dir" 2>/dev/null
}

# Prints the cluster folder used when the server user cannot reach
# STATE_DIR/postgres. The name is derived from STATE_DIR, so each clone
# gets its own.
postgres_fallback_dir() {
    printf '/var/tmp/sentinel-monitor-%s/postgres' "$(printf '%s' "$STATE_DIR" | sha256sum | cut -c1-12)"
}

# Picks the cluster's folder: STATE_DIR/postgres, or, when running as root and
# the server user cannot reach that folder, a folder under /var/tmp named
# after STATE_DIR.
postgres_choose_dir() {
    if [[ -n "$PG_DIR" ]]; then
        mkdir -p "$PG_DIR"
        postgres_take_ownership "$PG_DIR"
        postgres_server_user_can_write "$PG_DIR" ||
            die "the server user $PG_OS_USER cannot write to SENTINEL_PG_DIR=$PG_DIR; make every folder above it traversable (chmod o+x) or pick another folder"
        return 0
    fi

    PG_DIR="$STATE_DIR/postgres"
    mkdir -p "$PG_DIR"
    postgres_take_ownership "$PG_DIR"
    postgres_server_user_can_write "$PG_DIR" && return 0

    local fallback
    fallback="$(postgres_fallback_dir)"
    warn "$PG_OS_USER cannot reach $PG_DIR (a folder above it is not traversable); using $fallback"
    PG_DIR="$fallback"
    mkdir -p "$PG_DIR"
    chmod 0755 "$(dirname "$PG_DIR")"
    postgres_take_ownership "$PG_DIR"
    postgres_server_user_can_write "$PG_DIR" || die "the server user $PG_OS_USER cannot write to $PG_DIR either; set SENTINEL_PG_DIR to a folder it can write to"
}

postgres_take_ownership() {
    local dir="$1"
    if [[ "$(id -u)" -eq 0 ]]; then
        id "$PG_OS_USER" >/dev/null 2>&1 ||
            die "OS user $PG_OS_USER not found; Debian's postgresql package creates it, or set SENTINEL_PG_OS_USER to the user that should run the server"
        chown "$PG_OS_USER:" "$dir"
    fi
}

# Sets the paths inside the cluster's folder. Without postgres_choose_dir
# (stop and status), the folder is the one that contains a cluster.
postgres_set_paths() {
    if [[ -z "$PG_DIR" ]]; then
        PG_DIR="$STATE_DIR/postgres"
        if [[ ! -d "$PG_DIR/data" && -d "$(postgres_fallback_dir)/data" ]]; then
            PG_DIR="$(postgres_fallback_dir)"
        fi
    fi
    PG_DATA_DIR="$PG_DIR/data"
    PG_LOG_DIR="$PG_DIR/log"
    PG_LOG_FILE="$PG_LOG_DIR/postgresql.log"
}

postgres_initdb() {
    [[ -f "$PG_DATA_DIR/PG_VERSION" ]] && return 0

    local init_log="$PG_LOG_DIR/initdb.log"
    say "postgres: creating a cluster in $PG_DATA_DIR with $PG_BIN_DIR/initdb"
    # Trust authentication: any local OS user may connect as any role over
    # loopback TCP without a password. Acceptable only because this cluster
    # is a development and test database that listens on 127.0.0.1.
    if ! postgres_as_server_user "$PG_BIN_DIR/initdb" \
        --pgdata="$PG_DATA_DIR" --username="$PG_SUPERUSER" \
        --encoding=UTF8 --locale=C \
        --auth-local=trust --auth-host=trust \
        >"$init_log" 2>&1; then
        show_log_tail "$init_log"
        die "initdb failed for $PG_DATA_DIR; read $init_log"
    fi
    printf "\n# Settings of the local Sentinel Monitor cluster, rewritten by scripts/services on every start.\ninclude_if_exists = 'sentinel-local.conf'\n" |
        postgres_as_server_user tee -a "$PG_DATA_DIR/postgresql.conf" >/dev/null
}

# Writes the server settings on every start, so a changed port takes effect.
postgres_write_settings() {
    postgres_as_server_user tee "$PG_DATA_DIR/sentinel-local.conf" >/dev/null <<EOF
# Written by scripts/services on every start, so edits here are lost.
listen_addresses = '$SERVICE_HOST'
port = $PG_PORT
# No Unix socket, because clients connect over loopback TCP and a long state
# folder path could exceed the 107-byte socket path limit.
unix_socket_directories = ''
timezone = 'UTC'
log_timezone = 'UTC'
log_line_prefix = '%m [%p] %q%u@%d '
EOF
}

postgres_check_version() {
    local data_version bin_version
    data_version="$(cat "$PG_DATA_DIR/PG_VERSION")"
    bin_version="$("$PG_BIN_DIR/pg_ctl" --version | sed -E 's/^[^0-9]*([0-9]+).*/\1/')"
    [[ "$data_version" == "$bin_version" ]] ||
        die "the cluster in $PG_DATA_DIR was created by PostgreSQL $data_version, but $PG_BIN_DIR contains PostgreSQL $bin_version; point SENTINEL_PG_BIN_DIR at /usr/lib/postgresql/$data_version/bin, or delete $PG_DIR to start empty"
}

# Prints the postmaster's pid, or nothing when it does not run.
postgres_pid() {
    local pid_file="$PG_DATA_DIR/postmaster.pid" pid
    [[ -r "$pid_file" ]] || return 0
    pid="$(head -n 1 "$pid_file")"
    # A stale pid file can name a recycled pid, so the process must be a
    # postgres binary as well as alive.
    if process_alive "$pid" && [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == */postgres ]]; then
        printf '%s' "$pid"
    fi
}

postgres_psql() {
    local user="$1" database="$2"
    shift 2
    PGCONNECT_TIMEOUT=3 "$PG_BIN_DIR/psql" --no-psqlrc --quiet --set=ON_ERROR_STOP=1 \
        --host="$SERVICE_HOST" --port="$PG_PORT" --username="$user" --dbname="$database" "$@"
}

# Succeeds when the server accepts connections and runs a query as the application role.
postgres_healthy() {
    "$PG_BIN_DIR/pg_isready" --quiet --host="$SERVICE_HOST" --port="$PG_PORT" --timeout=3 || return 1
    [[ "$(postgres_psql "$PG_APP_ROLE" sentinel --tuples-only --no-align --command='SELECT 1' 2>/dev/null)" == 1 ]]
}

# Creates the application role and databases when missing.
postgres_provision() {
    local database sql
    sql="SELECT 'CREATE ROLE $PG_APP_ROLE LOGIN CREATEDB' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_APP_ROLE')\\gexec"$'\n'
    for database in "${PG_APP_DATABASES[@]}"; do
        sql+="SELECT 'CREATE DATABASE $database OWNER $PG_APP_ROLE' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$database')\\gexec"$'\n'
    done
    printf '%s' "$sql" | postgres_psql "$PG_SUPERUSER" postgres >/dev/null ||
        die "creating the role $PG_APP_ROLE and the databases ${PG_APP_DATABASES[*]} failed; read the psql error above and $PG_LOG_FILE"
}

# Waits until the server accepts connections, creates the role and databases
# when missing, and checks that the application role can run a query.
postgres_wait_healthy() {
    local started="$1"
    local deadline
    deadline="$(deadline_in "$START_TIMEOUT_S")"
    until "$PG_BIN_DIR/pg_isready" --quiet --host="$SERVICE_HOST" --port="$PG_PORT" --timeout=3; do
        if [[ -z "$(postgres_pid)" ]]; then
            show_log_tail "$PG_LOG_FILE"
            die "the PostgreSQL server exited during start-up; read $PG_LOG_FILE"
        fi
        if deadline_passed "$deadline"; then
            show_log_tail "$PG_LOG_FILE"
            die "PostgreSQL on $SERVICE_HOST:$PG_PORT did not accept connections within ${START_TIMEOUT_S}s; read $PG_LOG_FILE, or stop it with scripts/services stop postgres and raise SENTINEL_SERVICES_START_TIMEOUT_S"
        fi
        sleep 0.2
    done

    postgres_provision
    postgres_healthy ||
        die "PostgreSQL on $SERVICE_HOST:$PG_PORT accepts connections, but SELECT 1 as $PG_APP_ROLE in the database sentinel failed; read $PG_LOG_FILE"
    say "postgres: healthy on $SERVICE_HOST:$PG_PORT (pid $(postgres_pid)) after $(elapsed_s "$started") s"
}

postgres_launch() {
    # pg_ctl returns once the server accepts connections or the timeout
    # passes. setsid keeps Ctrl-C in the caller's terminal from reaching the
    # server. 9>&- closes the lock file, so the server does not hold the lock.
    if ! postgres_as_server_user setsid "$PG_BIN_DIR/pg_ctl" start --pgdata="$PG_DATA_DIR" --log="$PG_LOG_FILE" \
        --wait --timeout="$START_TIMEOUT_S" --silent 9>&-; then
        show_log_tail "$PG_LOG_FILE"
        die "pg_ctl could not start PostgreSQL from $PG_DATA_DIR; read $PG_LOG_FILE"
    fi
}

postgres_start() {
    local started pid
    started="$(now_s)"
    postgres_install
    postgres_choose_dir
    postgres_set_paths

    pid="$(postgres_pid)"
    if [[ -n "$pid" ]]; then
        say "postgres: already running (pid $pid)"
        postgres_wait_healthy "$started"
        return 0
    fi

    if port_open "$SERVICE_HOST" "$PG_PORT"; then
        die "$SERVICE_HOST:$PG_PORT is already in use by a process that scripts/services did not start from $PG_DATA_DIR; stop that process, or move this server with SENTINEL_PG_PORT"
    fi
    mkdir -p "$PG_LOG_DIR"
    postgres_take_ownership "$PG_LOG_DIR"
    postgres_initdb
    postgres_check_version
    postgres_write_settings

    say "postgres: starting PostgreSQL $(cat "$PG_DATA_DIR/PG_VERSION") on $SERVICE_HOST:$PG_PORT (data $PG_DATA_DIR)"
    postgres_launch
    postgres_wait_healthy "$started"
}

postgres_stop() {
    local pid started
    postgres_set_paths
    pid="$(postgres_pid)"
    if [[ -z "$pid" ]]; then
        say "postgres: not running"
        return 0
    fi
    postgres_find_bin_dir
    started="$(now_s)"
    say "postgres: stopping the server (pid $pid)"
    # Fast shutdown rolls back open transactions and disconnects clients,
    # unlike SIGTERM (smart shutdown), which waits for every client to leave.
    if ! postgres_as_server_user "$PG_BIN_DIR/pg_ctl" stop --pgdata="$PG_DATA_DIR" \
        --mode=fast --wait --timeout="$STOP_TIMEOUT_S" --silent; then
        warn "PostgreSQL (pid $pid) did not stop within ${STOP_TIMEOUT_S}s of a fast shutdown; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    local deadline
    deadline="$(deadline_in 10)"
    while process_alive "$pid"; do
        deadline_passed "$deadline" && die "PostgreSQL (pid $pid) survived SIGKILL for 10 s"
        sleep 0.1
    done
    say "postgres: stopped after $(elapsed_s "$started") s"
}

postgres_status() {
    local pid
    postgres_find_bin_dir
    postgres_set_paths
    pid="$(postgres_pid)"
    if [[ -z "$pid" ]]; then
        printf '%-9s %-16s %-12s %s\n' postgres "$SERVICE_HOST:$PG_PORT" "-" "stopped"
        return 3
    fi
    if [[ -n "$PG_BIN_DIR" ]] && postgres_healthy; then
        printf '%-9s %-16s %-12s %s\n' postgres "$SERVICE_HOST:$PG_PORT" "pid $pid" "healthy (SELECT 1 as $PG_APP_ROLE)"
        return 0
    fi
    printf '%-9s %-16s %-12s %s\n' postgres "$SERVICE_HOST:$PG_PORT" "pid $pid" "not responding; read $PG_LOG_FILE"
    return 3
}
