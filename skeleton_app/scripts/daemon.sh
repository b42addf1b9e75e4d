# daemon.sh: start, stop or check the node daemon under the `process` manager.
#
# Sent on stdin, so nothing but the pid file and the log is written to the node:
#     sh -s -- ACTION APP_DIR PID_FILE LOG_FILE MARKER STOP_GRACE START_GRACE NODE_ID [-- CMD [ARG...]] < daemon.sh
#   ACTION       start | stop | status
#   APP_DIR      the daemon runs in it; relative PID_FILE/LOG_FILE paths are relative to it
#   PID_FILE     holds the daemon's pid (written by the daemon's own process before it execs)
#   LOG_FILE     the daemon's stdout and stderr are appended to it (its directory is created)
#   MARKER       a string the daemon's /proc/PID/cmdline must contain; a pid whose command line
#                lacks it is not our daemon (PIDs get reused) and is never signalled
#   STOP_GRACE   seconds between SIGTERM and SIGKILL (decimals allowed: 0.5)
#   START_GRACE  seconds the daemon must stay alive for `start` to report success
#   NODE_ID      exported to the daemon as SKELETON_NODE_ID ("" leaves the environment as is)
#   CMD ARG...   start only: the daemon's argv, already split; run with exec, never eval'd.
#                It must stay in the foreground (not fork and exit) and keep MARKER in its
#                command line: start checks both during START_GRACE
#
# Prints one line `state=STATE [pid=N] [signal=TERM|KILL]`, then maybe `message=...`, and, when
# the daemon died at start, its output between `--- begin log_tail` and `--- end log_tail`:
#   start   started pid=N (exit 0) | already-running pid=N (0) | died pid=N (1) | error (1)
#   stop    stopped pid=N signal=TERM|KILL (0) | not-running (0) | error pid=N (1)
#   status  running pid=N (0) | not-running (3, as LSB init scripts and `systemctl is-active`)
#   bad arguments: state=error, exit 2, nothing done
# start and stop are idempotent: starting a running daemon and stopping a stopped one succeed.
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

[ "$#" -ge 8 ] || usage "expected ACTION APP_DIR PID_FILE LOG_FILE MARKER STOP_GRACE START_GRACE NODE_ID [-- CMD...], got $# arguments"
action=$1
app_dir=$2
pid_file=$3
log_file=$4
marker=$5
stop_grace=$6
start_grace=$7
node_id=$8
shift 8
if [ "$#" -gt 0 ]; then
    [ "$1" = -- ] || usage "expected -- before the daemon command, got \"$1\""
    shift
fi

# Without a marker every process would look like ours, and stop could kill anything.
[ -n "$marker" ] || usage "MARKER must not be empty"
[ -n "$pid_file" ] || usage "PID_FILE must not be empty"

# tenths SECONDS: print SECONDS as a whole number of tenths ("2" -> 20, "0.55" -> 5), for
# polling every 0.1 s with shell integer arithmetic.
tenths() {
    case $1 in
        '' | . | *[!0-9.]* | *.*.*) return 1 ;;
    esac
    _int=${1%%.*}
    _frac=${1#"$_int"}
    _frac=${_frac#.}
    # Leading zeros would make $((...)) read the number as octal.
    while :; do
        case $_int in
            0?*) _int=${_int#0} ;;
            *) break ;;
        esac
    done
    case $_frac in
        '') _frac=0 ;;
        *) _frac=$(printf '%.1s' "$_frac") ;;
    esac
    echo "$((${_int:-0} * 10 + _frac))"
}

stop_tenths=$(tenths "$stop_grace") || usage "STOP_GRACE must be a number of seconds, got \"$stop_grace\""
start_tenths=$(tenths "$start_grace") || usage "START_GRACE must be a number of seconds, got \"$start_grace\""

# --- shared: pid checks (identical in daemon.sh; tests/test_daemon_script.py compares them) ---

# read_pid: set $pid from $pid_file; false (and pid empty) when missing or not a plain pid > 1.
# Refusing 0 and 1 matters: `kill 0` signals our own process group, pid 1 is init.
read_pid() {
    pid=
    [ -f "$pid_file" ] || return 1
    read -r pid _rest 2>/dev/null <"$pid_file" || [ -n "$pid" ] || return 1
    case $pid in
        '' | 0* | 1 | *[!0-9]* | ????????*) pid= ; return 1 ;;
    esac
    return 0
}

# proc_state PID: print the one-letter state (R, S, D, Z, ...); false when there is no such pid.
# The command name in /proc/PID/stat may hold spaces and ')', so cut after the last ') '.
proc_state() {
    _stat=
    [ -r "/proc/$1/stat" ] || return 1
    read -r _stat 2>/dev/null <"/proc/$1/stat" || [ -n "$_stat" ] || return 1
    _stat=${_stat##*) }
    printf '%s\n' "${_stat%% *}"
}

# alive PID: a process exists and is not a zombie (a zombie's pid still shows in /proc).
alive() {
    _state=$(proc_state "$1") || return 1
    [ "$_state" != Z ]
}

# is_ours PID: PID is a live process whose command line contains $marker. A zombie's cmdline is
# empty, so it is never ours. Our own shell is excluded: its argv carries the marker too.
is_ours() {
    [ -n "$marker" ] || return 1
    [ "$1" != "$$" ] || return 1
    [ -r "/proc/$1/cmdline" ] || return 1
    _cmdline=$(tr '\000' ' ' 2>/dev/null <"/proc/$1/cmdline") || return 1
    case $_cmdline in
        *"$marker"*) return 0 ;;
    esac
    return 1
}

# --- end shared ---

# signal_daemon SIGNAL PID: signal the daemon and, when it leads its own process group (as
# every daemon this script starts does, through setsid), the workers it spawned too: a SIGKILL
# to the leader alone would leave them running, holding memory and GPUs.
signal_daemon() {
    if [ "$(proc_pgrp "$2")" = "$2" ]; then
        kill -s "$1" -- "-$2" 2>/dev/null
    else
        kill -s "$1" "$2" 2>/dev/null
    fi
}

# proc_pgrp PID: print the process group id (the third field after the command name).
proc_pgrp() {
    _stat=
    read -r _stat 2>/dev/null <"/proc/$1/stat" || [ -n "$_stat" ] || return 1
    _stat=${_stat##*) }
    set -f
    # shellcheck disable=SC2086 # split the stat fields on purpose
    set -- $_stat
    set +f
    printf '%s\n' "${3-}"
}

# wait_while CHECK PID TENTHS: wait up to TENTHS tenths of a second while `CHECK PID` holds;
# false when it still holds at the end.
wait_while() {
    _left=$3
    while "$1" "$2"; do
        [ "$_left" -gt 0 ] || return 1
        sleep 0.1
        _left=$((_left - 1))
    done
    return 0
}

# not_running_message: say why the pid file does not name a running daemon, removing a stale or
# wrong one when $1 is "clean" (stop does; status only reports).
not_running_message() {
    if [ ! -e "$pid_file" ]; then
        return
    fi
    if [ -n "$pid" ] && alive "$pid"; then
        _why="pid $pid from $pid_file is another process (no \"$marker\" in its command line): left alone"
    elif [ -n "$pid" ]; then
        _why="stale pid file $pid_file: pid $pid is gone"
    else
        _why="pid file $pid_file does not hold a valid pid"
    fi
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

do_status() {
    if read_pid && is_ours "$pid"; then
        printf 'state=running pid=%s\n' "$pid"
        exit 0
    fi
    printf 'state=not-running\n'
    not_running_message keep
    exit 3
}

do_stop() {
    if ! read_pid || ! is_ours "$pid"; then
        printf 'state=not-running\n'
        not_running_message clean
        exit 0
    fi
    signal_daemon TERM "$pid" || fail "could not send SIGTERM to pid $pid" "$pid"
    if wait_while is_ours "$pid" "$stop_tenths"; then
        rm -f -- "$pid_file"
        printf 'state=stopped pid=%s signal=TERM\n' "$pid"
        exit 0
    fi
    signal_daemon KILL "$pid"
    # SIGKILL cannot be ignored, but the kernel may need a moment (or the process sits in
    # uninterruptible sleep): allow 5 s before calling it a failure.
    if wait_while is_ours "$pid" 50; then
        rm -f -- "$pid_file"
        printf 'state=stopped pid=%s signal=KILL\n' "$pid"
        exit 0
    fi
    fail "pid $pid still runs after SIGKILL" "$pid"
}

do_start() {
    [ "$#" -gt 0 ] || usage "start needs the daemon command after --"
    # status and stop recognise the daemon by the marker in its command line: a command without
    # it would start a daemon that nothing can find again.
    case " $* " in
        *"$marker"*) ;;
        *) usage "the daemon command does not contain the marker \"$marker\"" ;;
    esac
    if read_pid && is_ours "$pid"; then
        printf 'state=already-running pid=%s\n' "$pid"
        exit 0
    fi
    # A stale pid file must go before the launch: the new pid file is how we learn the pid.
    rm -f -- "$pid_file"
    mkdir -p -- "$(dirname -- "$log_file")" "$(dirname -- "$pid_file")" ||
        fail "cannot create the directories of $log_file and $pid_file"
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
    # setsid -f forks, so its own pid is useless: the daemon's process writes its pid itself
    # (through a temporary name, so a reader never sees half a number) and then execs the
    # command, keeping that pid. stdin, stdout and stderr all leave the SSH channel.
    # shellcheck disable=SC2016 # $$ and $1 are for the inner shell
    setsid -f sh -c 'printf "%s\n" "$$" >"$1.$$" && mv -f -- "$1.$$" "$1" || exit 126
        shift
        exec "$@"' skeleton-daemon-start "$pid_file" "$@" </dev/null >>"$log_file" 2>&1 ||
        fail "setsid failed to start the daemon (see $log_file)"
    # The pid file appears within milliseconds; 5 s covers a loaded node.
    _wait=50
    until read_pid; do
        [ "$_wait" -gt 0 ] || fail "the daemon did not write its pid file $pid_file within 5 s"
        sleep 0.1
        _wait=$((_wait - 1))
    done
    # Poll through the grace period, so that a daemon that dies at once is reported at once.
    _left=$start_tenths
    while is_ours "$pid"; do
        if [ "$_left" -le 0 ]; then
            printf 'state=started pid=%s\n' "$pid"
            exit 0
        fi
        sleep 0.1
        _left=$((_left - 1))
    done
    if alive "$pid"; then
        # It runs but rewrote its command line (setproctitle, a wrapper that execs something
        # else): status and stop would never find it, so do not leave it running untracked.
        signal_daemon TERM "$pid"
        wait_while alive "$pid" "$stop_tenths" || signal_daemon KILL "$pid"
        rm -f -- "$pid_file"
        fail "pid $pid started but its command line lacks \"$marker\"; stopped it" "$pid"
    fi
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
