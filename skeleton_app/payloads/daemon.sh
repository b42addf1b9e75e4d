# uses: prelude
# daemon.sh: start, stop or check the node daemon under the `process` manager.
#
# Sent on stdin, so nothing but the pid file, the lock file and the log is written to the node:
#     sh -s -- ACTION APP_DIR PID_FILE LOG_FILE LOCK_FILE STOP_GRACE START_GRACE NODE_ID [-- CMD [ARG...]] < daemon.sh
#   ACTION       start | stop | status
#   APP_DIR      the daemon runs in it; relative PID_FILE/LOG_FILE/LOCK_FILE paths are relative to it
#   PID_FILE     holds the daemon's identity `PID START_TIME BOOT_ID` (written by the daemon's own
#                process before it execs): a recycled pid never passes for the daemon
#   LOG_FILE     the daemon's stdout and stderr are appended to it (its directory is created)
#   LOCK_FILE    the daemon holds an exclusive flock on it for its whole life (the descriptor is
#                inherited): while it is held, a daemon lives, even if the pid file is lost
#   STOP_GRACE   seconds between SIGTERM and SIGKILL (decimals allowed: 0.5)
#   START_GRACE  seconds the daemon must stay alive for `start` to report success
#   NODE_ID      exported to the daemon as SKELETON_NODE_ID ("" leaves the environment as is)
#   CMD ARG...   start only: the daemon's argv, already split; run with exec, never eval'd. Any
#                command; it must stay in the foreground (not fork and exit)
#
# Prints one line `state=STATE [pid=N] [signal=TERM|KILL]`, then maybe `message=...`, and, when
# the daemon died at start, its output between `--- begin log_tail` and `--- end log_tail`:
#   start   started pid=N (exit 0) | already-running [pid=N] (0) | died pid=N (1) | error (1)
#   stop    stopped pid=N signal=TERM|KILL (0) | not-running (0) | error [pid=N] (1)
#   status  running [pid=N] (0) | not-running (3, as LSB init scripts and `systemctl is-active`)
#   bad arguments: state=error, exit 2, nothing done
# start and stop are idempotent: starting a running daemon and stopping a stopped one succeed.
# Needs flock (util-linux) to start.
#
# The daemon is detached completely (setsid, stdin from /dev/null, stdout and stderr to the log)
# so the SSH channel closes when this script ends: with a bare `&` or nohup, the channel stays
# open for the daemon's whole life. POSIX sh only (runs under dash); every expansion is quoted.

set -u

usage() {
    printf 'state=error\nmessage=%s\n' "$1"
    exit 2
}

fail() {
    printf 'state=error%s\nmessage=%s\n' "${2:+ pid=$2}" "$1"
    exit 1
}

[ "$#" -ge 8 ] || usage "expected ACTION APP_DIR PID_FILE LOG_FILE LOCK_FILE STOP_GRACE START_GRACE NODE_ID [-- CMD...], got $# arguments"
action=$1
app_dir=$2
pid_file=$3
log_file=$4
lock_file=$5
stop_grace=$6
start_grace=$7
node_id=$8
shift 8
if [ "$#" -gt 0 ]; then
    [ "$1" = -- ] || usage "expected -- before the daemon command, got \"$1\""
    shift
fi

[ -n "$lock_file" ] || usage "LOCK_FILE must not be empty"
[ -n "$pid_file" ] || usage "PID_FILE must not be empty"


stop_tenths=$(tenths "$stop_grace") || usage "STOP_GRACE must be a number of seconds, got \"$stop_grace\""
start_tenths=$(tenths "$start_grace") || usage "START_GRACE must be a number of seconds, got \"$start_grace\""


# signal_daemon SIGNAL: signal the daemon ($pid, > 1 by construction) and, when it leads its own
# process group (as every daemon this script starts does, through setsid), the workers it
# spawned too: a SIGKILL to the leader alone would leave them running, holding memory and GPUs.
# Its identity is checked again right before: between two polls its pid may have been reused.
signal_daemon() {
    daemon_alive || return 1
    if [ "$st_pgrp" = "$pid" ]; then
        kill -s "$1" -- "-$pid" 2>/dev/null
    else
        kill -s "$1" "$pid" 2>/dev/null
    fi
}

# daemon_alive: the process that find_daemon found is still that process.
daemon_alive() {
    is_ours "$pid" "$start" "$boot"
}

# wait_while CHECK TENTHS: wait up to TENTHS tenths of a second while CHECK holds; false when it
# still holds at the end.
wait_while() {
    _left=$2
    while "$1"; do
        [ "$_left" -gt 0 ] || return 1
        sleep 0.1
        _left=$((_left - 1))
    done
    return 0
}

# write_record FILE: record the daemon that find_daemon found (through a temporary name, so a
# reader never sees half a record).
write_record() {
    printf '%s %s %s\n' "$pid" "$start" "$boot" >"$1.$$" && mv -f -- "$1.$$" "$1"
}

# report_not_running CLEAN: say why the pid file names no running daemon; with CLEAN=clean (stop)
# remove it. A daemon that holds the lock is never reported here: find_daemon found it.
report_not_running() {
    _why=$(record_problem)
    [ -n "$_why" ] || return 0
    if [ "$1" = clean ]; then
        rm -f -- "$pid_file"
        _why="$_why; pid file removed"
    fi
    printf 'message=%s\n' "$_why"
}

# Relative paths are relative to the app dir. Without the app dir there is nothing to start,
# and a relative pid file cannot exist: stop and status then report not-running.
if ! cd -- "$app_dir" 2>/dev/null; then
    case $action in
        start) fail "cannot enter the app dir $app_dir" ;;
        stop | status)
            case $pid_file in
                /*) ;;
                *)
                    printf 'state=not-running\nmessage=no app dir %s\n' "$app_dir"
                    [ "$action" = stop ] && exit 0
                    exit 3
                    ;;
            esac
            ;;
    esac
fi

UNKNOWN_PID="the daemon holds the lock $lock_file, but neither $pid_file nor /proc names its pid"
FOUND_BY_LOCK="$pid_file does not name the running daemon (missing, corrupt or stale); found it through the lock $lock_file"

do_status() {
    _found=0
    find_daemon || _found=$?
    case $_found in
        0)
            printf 'state=running pid=%s\n' "$pid"
            [ "$via" = record ] || printf 'message=%s\n' "$FOUND_BY_LOCK"
            exit 0
            ;;
        2)
            printf 'state=running\nmessage=%s\n' "$UNKNOWN_PID"
            exit 0
            ;;
    esac
    printf 'state=not-running\n'
    report_not_running keep
    exit 3
}

do_stop() {
    _found=0
    find_daemon || _found=$?
    case $_found in
        1)
            printf 'state=not-running\n'
            report_not_running clean
            exit 0
            ;;
        2) fail "$UNKNOWN_PID: left running" ;;
    esac
    _note=
    [ "$via" = record ] || _note=$FOUND_BY_LOCK
    # A daemon that exited on its own meanwhile counts as stopped.
    if ! signal_daemon TERM && daemon_alive; then
        fail "could not send SIGTERM to pid $pid" "$pid"
    fi
    _signal=TERM
    if ! wait_while daemon_alive "$stop_tenths"; then
        signal_daemon KILL
        _signal=KILL
        # SIGKILL cannot be ignored, but the kernel may need a moment (or the process sits in
        # uninterruptible sleep): allow 5 s before calling it a failure.
        wait_while daemon_alive 50 || fail "pid $pid still runs after SIGKILL" "$pid"
    fi
    rm -f -- "$pid_file"
    printf 'state=stopped pid=%s signal=%s\n' "$pid" "$_signal"
    [ -z "$_note" ] || printf 'message=%s\n' "$_note"
    exit 0
}

do_start() {
    [ "$#" -gt 0 ] || usage "start needs the daemon command after --"
    _found=0
    find_daemon || _found=$?
    case $_found in
        0)
            printf 'state=already-running pid=%s\n' "$pid"
            if [ "$via" = lock ]; then
                # Repair the record, so that the next stop or status reads it directly.
                write_record "$pid_file" 2>/dev/null
                printf 'message=%s; pid file rewritten\n' "$FOUND_BY_LOCK"
            fi
            exit 0
            ;;
        2)
            printf 'state=already-running\nmessage=%s\n' "$UNKNOWN_PID"
            exit 0
            ;;
    esac
    command -v flock >/dev/null 2>&1 ||
        fail "flock is not installed on the node (util-linux): the daemon's lock needs it"
    # A stale pid file must go before the launch: the new pid file is how we learn the pid.
    rm -f -- "$pid_file"
    mkdir -p -- "$(dirname -- "$log_file")" "$(dirname -- "$pid_file")" \
        "$(dirname -- "$lock_file")" ||
        fail "cannot create the directories of $log_file, $pid_file and $lock_file"
    # Remember where this start's output begins, to show only it if the daemon dies.
    _offset=0
    if [ -f "$log_file" ]; then
        _offset=$(wc -c <"$log_file") || _offset=0
    fi
    printf '=== %s daemon.sh: starting in %s: %s\n' "$(date -u '+%Y-%m-%dT%H:%M:%SZ')" \
        "$app_dir" "$*" >>"$log_file" || fail "cannot write the log $log_file"
    if [ -n "$node_id" ]; then
        SKELETON_NODE_ID=$node_id
        export SKELETON_NODE_ID
    fi
    # setsid -f forks, so its own pid is useless: the daemon's process takes the lock on fd 9
    # (which it keeps through exec), writes its record itself (pid, start time from its own
    # /proc/PID/stat, boot id) and then execs the command, keeping that pid and start time.
    # stdin, stdout and stderr all leave the SSH channel. The wait of up to 5 s covers a status
    # probe that holds a shared lock for an instant.
    # shellcheck disable=SC2016 # $$ and $1 are for the inner shell
    setsid -f sh -c 'exec 9>>"$2" || exit 126
        flock -w 5 9 || { echo "daemon.sh: the lock $2 is held by another process" >&2; exit 125; }
        _start=$(read -r _s </proc/$$/stat && _s=${_s##*)} && set -f && set -- $_s &&
            shift 19 && printf %s "$1") || exit 126
        printf "%s %s %s\n" "$$" "$_start" "$3" >"$1.$$" && mv -f -- "$1.$$" "$1" || exit 126
        shift 3
        exec "$@"' skeleton-daemon-start "$pid_file" "$lock_file" "$this_boot" "$@" \
        </dev/null >>"$log_file" 2>&1 ||
        fail "setsid failed to start the daemon (see $log_file)"
    # The pid file appears within milliseconds; 10 s covers a loaded node and the lock wait.
    _wait=100
    until read_record "$pid_file"; do
        [ "$_wait" -gt 0 ] || fail "the daemon did not write its pid file $pid_file within 10 s (see $log_file)"
        sleep 0.1
        _wait=$((_wait - 1))
    done
    # Poll through the grace period, so that a daemon that dies at once is reported at once.
    _left=$start_tenths
    while daemon_alive; do
        if [ "$_left" -le 0 ]; then
            printf 'state=started pid=%s\n' "$pid"
            exit 0
        fi
        sleep 0.1
        _left=$((_left - 1))
    done
    rm -f -- "$pid_file"
    printf 'state=died pid=%s\n' "$pid"
    printf 'message=the daemon exited within %s s; the last lines of %s:\n' "$start_grace" "$log_file"
    printf '%s\n' '--- begin log_tail'
    # Through a variable, so that a last line without a newline cannot swallow the end marker.
    _tail=$(tail -c +"$((_offset + 1))" -- "$log_file" 2>/dev/null | tail -n 20)
    [ -z "$_tail" ] || printf '%s\n' "$_tail"
    printf '%s\n' '--- end log_tail'
    exit 1
}

case $action in
    start) do_start "$@" ;;
    stop) do_stop ;;
    status) do_status ;;
    *) usage "ACTION must be start, stop or status, got \"$action\"" ;;
esac
