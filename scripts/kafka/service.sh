# Local single-node Apache Kafka broker (KRaft, combined broker and
# controller), run from the official jars on Maven Central.
# Sourced by scripts/services, which defines say, warn, die, the deadline
# helpers, STATE_DIR, CACHE_HOME and the timeouts.

kafka_configure() {
    KAFKA_VERSION="${SENTINEL_KAFKA_VERSION:-4.1.1}"
    KAFKA_PORT="${SENTINEL_KAFKA_PORT:-19092}"
    KAFKA_CONTROLLER_PORT="${SENTINEL_KAFKA_CONTROLLER_PORT:-19093}"
    KAFKA_HEAP="${SENTINEL_KAFKA_HEAP:-512m}"
    KAFKA_EXTRA_JAVA_OPTS="${SENTINEL_KAFKA_JAVA_OPTS:-}"
    require_whole_number SENTINEL_KAFKA_PORT "$KAFKA_PORT"
    require_whole_number SENTINEL_KAFKA_CONTROLLER_PORT "$KAFKA_CONTROLLER_PORT"

    # The jars are shared by every clone on the machine, but the broker data belongs to one clone.
    KAFKA_INSTALL_DIR="$CACHE_HOME/kafka-$KAFKA_VERSION"
    KAFKA_LIBS_DIR="$KAFKA_INSTALL_DIR/libs"
    KAFKA_POM="$SCRIPTS_DIR/kafka/pom.xml"
    KAFKA_DIR="$STATE_DIR/kafka"
    KAFKA_DATA_DIR="$KAFKA_DIR/data"
    KAFKA_LOG_DIR="$KAFKA_DIR/logs"
    KAFKA_SERVER_LOG="$KAFKA_LOG_DIR/server.log"
    KAFKA_CONSOLE_LOG="$KAFKA_LOG_DIR/console.log"
    KAFKA_PROPERTIES="$KAFKA_DIR/server.properties"
    KAFKA_PID_FILE="$KAFKA_DIR/kafka.pid"

    if [[ -n "${JAVA_HOME:-}" ]]; then
        KAFKA_JAVA="$JAVA_HOME/bin/java"
    else
        KAFKA_JAVA="java"
    fi
}

# Fingerprint of the jar set: the Kafka version and the POM that resolved it.
kafka_install_stamp() {
    printf '%s %s\n' "$KAFKA_VERSION" "$(sha256sum "$KAFKA_POM" | cut -d' ' -f1)"
}

kafka_installed() {
    [[ -f "$KAFKA_INSTALL_DIR/.installed" ]] &&
        [[ "$(cat "$KAFKA_INSTALL_DIR/.installed")" == "$(kafka_install_stamp)" ]]
}

# Copies kafka_2.13 and its runtime dependencies from Maven Central into the
# machine-wide cache, once. The jars land in a temporary folder that is
# renamed into place, so an interrupted download is never used.
kafka_install() {
    kafka_installed && return 0
    command -v mvn >/dev/null || apt_install "mvn (Maven fetches Kafka's jars)" maven

    mkdir -p "$KAFKA_INSTALL_DIR"
    exec 8>"$KAFKA_INSTALL_DIR.lock"
    flock -w 600 8 || die "another process held $KAFKA_INSTALL_DIR.lock for 600 s while installing Kafka"
    if kafka_installed; then
        exec 8>&-
        return 0
    fi

    local started staging maven_log
    started="$(now_s)"
    staging="$KAFKA_INSTALL_DIR/libs.partial"
    maven_log="$KAFKA_INSTALL_DIR/maven.log"
    say "kafka: fetching org.apache.kafka:kafka_2.13:$KAFKA_VERSION and its runtime dependencies with Maven into $KAFKA_LIBS_DIR"
    rm -rf "$staging"
    if ! mvn -B -f "$KAFKA_POM" -Dkafka.version="$KAFKA_VERSION" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$staging" \
        >"$maven_log" 2>&1; then
        show_log_tail "$maven_log"
        die "Maven could not fetch Kafka $KAFKA_VERSION; read $maven_log. Check that Maven Central is reachable and that SENTINEL_KAFKA_VERSION names a released version."
    fi
    [[ -f "$staging/kafka_2.13-$KAFKA_VERSION.jar" ]] ||
        die "Maven finished but $staging lacks kafka_2.13-$KAFKA_VERSION.jar; read $maven_log"

    rm -rf "$KAFKA_LIBS_DIR"
    mv "$staging" "$KAFKA_LIBS_DIR"
    kafka_install_stamp >"$KAFKA_INSTALL_DIR/.installed"
    exec 8>&-
    say "kafka: installed $(find "$KAFKA_LIBS_DIR" -name '*.jar' | wc -l) jars in $(elapsed_s "$started") s"
}

# Writes server.properties on every start, so a changed port takes effect.
kafka_write_properties() {
    cat >"$KAFKA_PROPERTIES" <<EOF
# Written by scripts/services on every start, so edits here are lost.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$SERVICE_HOST:$KAFKA_CONTROLLER_PORT
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://$SERVICE_HOST:$KAFKA_PORT,CONTROLLER://$SERVICE_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$SERVICE_HOST:$KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DATA_DIR

# One node, so every internal topic has one replica.
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1

# Tests create topics by producing to them and expect several partitions.
auto.create.topics.enable=true
num.partitions=4
# A consumer group starts at once instead of waiting 3 s for more members.
group.initial.rebalance.delay.ms=0

# Fewer threads than the defaults (3 network, 8 I/O), because the broker
# shares a small machine with the model scorer.
num.network.threads=2
num.io.threads=4
EOF
}

# Prints the id of a new cluster: 16 random bytes in unpadded base64url, the
# format that the storage tool's format command accepts.
kafka_new_cluster_id() {
    head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n'
}

# Formats the log folder unless it is formatted already, so it keeps its cluster id.
kafka_format_storage() {
    [[ -f "$KAFKA_DATA_DIR/meta.properties" ]] && return 0

    local cluster_id format_log
    cluster_id="$(kafka_new_cluster_id)"
    format_log="$KAFKA_LOG_DIR/format.log"
    say "kafka: formatting $KAFKA_DATA_DIR with cluster id $cluster_id"
    if ! "$KAFKA_JAVA" -cp "$KAFKA_LIBS_DIR/*" \
        -Dlog4j2.configurationFile="$SCRIPTS_DIR/kafka/log4j2.properties" \
        -Dkafka.logs.dir="$KAFKA_LOG_DIR" \
        kafka.tools.StorageTool format --cluster-id "$cluster_id" --config "$KAFKA_PROPERTIES" --ignore-formatted \
        >"$format_log" 2>&1; then
        show_log_tail "$format_log"
        die "formatting the Kafka log folder $KAFKA_DATA_DIR failed; read $format_log and $KAFKA_SERVER_LOG"
    fi
}

# Succeeds when PID is the broker that this state folder configured, which
# guards against a recycled pid.
kafka_is_our_process() {
    local pid="$1"
    process_alive "$pid" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $KAFKA_PROPERTIES"
}

# Prints the broker's pid, or nothing when it does not run. Falls back to the
# process list when the pid file is gone but the broker still runs.
kafka_pid() {
    local pid=""
    [[ -f "$KAFKA_PID_FILE" ]] && pid="$(cat "$KAFKA_PID_FILE")"
    if kafka_is_our_process "$pid"; then
        printf '%s' "$pid"
        return 0
    fi
    pid="$(pgrep -f -- "kafka.Kafka $KAFKA_PROPERTIES" | head -n 1 || true)"
    if kafka_is_our_process "$pid"; then
        printf '%s' "$pid"
    fi
}

# Sends one Metadata request and prints the cluster id and brokers on success.
kafka_probe() {
    "$(probe_python)" "$SCRIPTS_DIR/kafka/probe.py" "$SERVICE_HOST" "$KAFKA_PORT" 3 2>/dev/null
}

# Waits until the broker responds, the process exits, or the start timeout passes.
kafka_wait_healthy() {
    local pid="$1" started="$2"
    local deadline
    deadline="$(deadline_in "$START_TIMEOUT_S")"
    until kafka_probe >/dev/null; do
        if ! process_alive "$pid"; then
            show_log_tail "$KAFKA_CONSOLE_LOG"
            show_log_tail "$KAFKA_SERVER_LOG"
            die "the Kafka broker (pid $pid) exited during start-up; read $KAFKA_SERVER_LOG and $KAFKA_CONSOLE_LOG"
        fi
        if deadline_passed "$deadline"; then
            show_log_tail "$KAFKA_SERVER_LOG"
            die "the Kafka broker (pid $pid) did not respond on $SERVICE_HOST:$KAFKA_PORT within ${START_TIMEOUT_S}s and keeps starting; read $KAFKA_SERVER_LOG, wait, or stop it with scripts/services stop kafka and raise SENTINEL_SERVICES_START_TIMEOUT_S"
        fi
        sleep 0.2
    done
    say "kafka: healthy on $SERVICE_HOST:$KAFKA_PORT (pid $pid) after $(elapsed_s "$started") s"
}

kafka_launch() {
    # setsid puts the broker in its own session, so Ctrl-C in the terminal
    # that ran scripts/services does not reach it. 9>&- and 8>&- close the
    # lock files, so the broker does not hold the locks while it runs.
    # shellcheck disable=SC2086  # KAFKA_EXTRA_JAVA_OPTS is a list of options.
    setsid "$KAFKA_JAVA" \
        -Xms128m -Xmx"$KAFKA_HEAP" \
        -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError \
        -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$SCRIPTS_DIR/kafka/log4j2.properties" \
        -Dkafka.logs.dir="$KAFKA_LOG_DIR" \
        $KAFKA_EXTRA_JAVA_OPTS \
        -cp "$KAFKA_LIBS_DIR/*" \
        kafka.Kafka "$KAFKA_PROPERTIES" \
        >>"$KAFKA_CONSOLE_LOG" 2>&1 </dev/null 9>&- 8>&- &
    printf '%s\n' "$!" >"$KAFKA_PID_FILE"
}

kafka_check_ports_free() {
    local port
    for port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
        if port_open "$SERVICE_HOST" "$port"; then
            die "$SERVICE_HOST:$port is already in use by a process that scripts/services did not start from $STATE_DIR; stop that process, or move this broker with SENTINEL_KAFKA_PORT and SENTINEL_KAFKA_CONTROLLER_PORT"
        fi
    done
}

kafka_start() {
    local started pid
    started="$(now_s)"
    pid="$(kafka_pid)"
    if [[ -n "$pid" ]]; then
        say "kafka: already running (pid $pid)"
        kafka_wait_healthy "$pid" "$started"
        return 0
    fi

    if ! command -v "$KAFKA_JAVA" >/dev/null; then
        [[ -z "${JAVA_HOME:-}" ]] || die "JAVA_HOME=$JAVA_HOME contains no bin/java; unset it or point it at a Java 17 or newer"
        apt_install "java (Java 17 or newer runs the broker)" openjdk-17-jre-headless
    fi
    kafka_install
    kafka_check_ports_free
    mkdir -p "$KAFKA_DATA_DIR" "$KAFKA_LOG_DIR"
    kafka_write_properties
    kafka_format_storage

    say "kafka: starting the broker on $SERVICE_HOST:$KAFKA_PORT (controller $SERVICE_HOST:$KAFKA_CONTROLLER_PORT, heap $KAFKA_HEAP)"
    kafka_launch
    kafka_wait_healthy "$(cat "$KAFKA_PID_FILE")" "$started"
}

kafka_stop() {
    local pid started
    pid="$(kafka_pid)"
    if [[ -z "$pid" ]]; then
        rm -f "$KAFKA_PID_FILE"
        say "kafka: not running"
        return 0
    fi
    started="$(now_s)"
    say "kafka: stopping the broker (pid $pid)"
    terminate_process "Kafka broker" "$pid"
    rm -f "$KAFKA_PID_FILE"
    say "kafka: stopped after $(elapsed_s "$started") s"
}

kafka_status() {
    local pid detail
    pid="$(kafka_pid)"
    if [[ -z "$pid" ]]; then
        printf '%-9s %-16s %-12s %s\n' kafka "$SERVICE_HOST:$KAFKA_PORT" "-" "stopped"
        return 3
    fi
    if detail="$(kafka_probe)"; then
        printf '%-9s %-16s %-12s %s\n' kafka "$SERVICE_HOST:$KAFKA_PORT" "pid $pid" "healthy ($detail)"
        return 0
    fi
    printf '%-9s %-16s %-12s %s\n' kafka "$SERVICE_HOST:$KAFKA_PORT" "pid $pid" "not responding; read $KAFKA_SERVER_LOG"
    return 3
}
