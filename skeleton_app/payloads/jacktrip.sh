# uses: prelude
# jacktrip.sh: start, stop or probe the JackTrip ends of `skeleton jack link` on one node
# (skeleton_app/ops/jack/links.py). Sent on stdin, so nothing but the pid files and the logs is
# written to the node:
#     sh -s -- start STATE_DIR LOGS_DIR END TOKEN SERVER CHECKS -- JACKTRIP ARG... < jacktrip.sh
#     sh -s -- stop  STATE_DIR LOGS_DIR END TOKEN JACKTRIP                          < jacktrip.sh
#     sh -s -- probe STATE_DIR LOGS_DIR JACKTRIP SERVER                             < jacktrip.sh
#   STATE_DIR  the ends' pid files: END.pid holds `PID START_TIME BOOT_ID TOKEN` (the prelude's
#              record, written by the end's own process before it execs jacktrip)
#   LOGS_DIR   each end's stdout and stderr go to LOGS_DIR/jacktrip-END.log
#   END        `hub@PEER` or `client@PEER` (PEER: the other node's id)
#   TOKEN      a word of the end's jacktrip command line (its JACK client name, or the hub's
#              port): with the program name, what /proc/PID/cmdline must show before any
#              signal is sent, besides the record's start time and boot id
#   SERVER     the JACK server's name (JACK_DEFAULT_SERVER of jacktrip and jack_lsp)
#   CHECKS     ports that must be free before a start: `udp:4464 tcp:4464` (one word each)
#
# Replies in the framing of skeleton_app/payloads/framing.py:
#   start  state=started pid=N (exit 0) | already-running pid=N (0) | missing (1: no jacktrip)
#          | no-jack-tools (1) | no-server (1) | port-in-use (1, message= names it)
#          | died pid=N (1, its log between `--- begin log_tail` / `--- end log_tail`)
#   stop   state=stopped pid=N signal=TERM|KILL (0) | not-running (0) | error (1)
#   probe  jacktrip=ok|missing  jack=up|down|missing, then per pid file
#          `end=END state=running|dead pid=N token=TOKEN connected=0|1`, per jacktrip
#          process `proc=PID ARGS...`, and jack_lsp's output in the block `ports`.
# POSIX sh only (runs under dash); every expansion is quoted.

set -u

usage() {
    printf 'state=error\nmessage=%s\n' "$1"
    exit 2
}

[ "$#" -ge 4 ] || usage "expected ACTION STATE_DIR LOGS_DIR ..., got $# arguments"
action=$1
state_dir=$2
logs_dir=$3
shift 3

START_MARK='jacktrip.sh: starting'
# shellcheck disable=SC2034 # the prelude's lock helpers read it; the ends have no lock file
lock_file=

# cmdline_is PID PROGRAM TOKEN: /proc/PID/cmdline runs PROGRAM (same base name) with TOKEN as
# one of its words. With the record's start time and boot id, a recycled pid never passes.
cmdline_is() {
    _prog=$(tr '\0' '\n' 2>/dev/null <"/proc/$1/cmdline" | head -n 1)
    [ -n "$_prog" ] && [ "${_prog##*/}" = "${2##*/}" ] || return 1
    tr '\0' '\n' 2>/dev/null <"/proc/$1/cmdline" | grep -qxF -e "$3"
}

# find_end END TOKEN PROGRAM: set pid (and start, boot) to the end's running process; false
# when its pid file names none (missing, stale, or another process: never signalled).
find_end() {
    pid_file="$state_dir/$1.pid"
    read_record "$pid_file" || return 1
    is_ours "$pid" "$start" "$boot" && cmdline_is "$pid" "$3" "$2"
}

# port_busy PROTO PORT: something on this node (its network namespace) holds PORT: any UDP
# socket bound to it, or a TCP socket listening on it (/proc/net: no ss or netstat needed).
port_busy() {
    _hex=$(printf '%04X' "$2")
    for _table in "/proc/net/$1" "/proc/net/${1}6"; do
        [ -r "$_table" ] || continue
        awk -v port="$_hex" -v proto="$1" 'NR > 1 {
                n = split($2, part, ":")
                if (part[n] == port && (proto != "tcp" || $4 == "0A")) found = 1
            }
            END { exit !found }' "$_table" && return 0
    done
    return 1
}

# connected LOG: the log's last start was followed by jacktrip's "Received Connection from Peer!"
connected() {
    [ -r "$1" ] || return 1
    awk -v mark="$START_MARK" 'index($0, mark) { c = 0 }
        /Received Connection from Peer/ { c = 1 }
        END { exit !c }' "$1"
}

# jack_state SERVER: print up, down or missing (no jack_lsp: Debian's jackd2 not installed).
jack_state() {
    command -v jack_lsp >/dev/null 2>&1 || { echo missing ; return ; }
    if JACK_DEFAULT_SERVER=$1 jack_lsp >/dev/null 2>&1; then echo up; else echo down; fi
}

# stop_pid: TERM the end found by find_end, SIGKILL after 5 s; false when it outlives that.
stop_pid() {
    kill -s TERM "$pid" 2>/dev/null
    _signal=TERM
    _left=50
    while is_ours "$pid" "$start" "$boot"; do
        if [ "$_left" -le 0 ]; then
            [ "$_signal" = KILL ] && return 1
            kill -s KILL "$pid" 2>/dev/null
            _signal=KILL
            _left=50
        fi
        sleep 0.1
        _left=$((_left - 1))
    done
    return 0
}

do_stop() {
    [ "$#" -eq 3 ] || usage "stop needs END TOKEN JACKTRIP"
    if find_end "$1" "$2" "$3"; then
        stop_pid || { printf 'state=error pid=%s\nmessage=pid %s still runs after SIGKILL\n' "$pid" "$pid" ; exit 1 ; }
        rm -f -- "$pid_file"
        printf 'state=stopped pid=%s signal=%s\n' "$pid" "$_signal"
        exit 0
    fi
    printf 'state=not-running\n'
    if [ -n "$pid" ] && alive "$pid"; then
        printf 'message=pid %s of %s is another process: left alone\n' "$pid" "$pid_file"
    fi
    rm -f -- "$pid_file"
    exit 0
}

do_start() {
    [ "$#" -ge 6 ] || usage "start needs END TOKEN SERVER CHECKS -- JACKTRIP ARG..."
    end=$1 token=$2 server=$3 checks=$4
    [ "$5" = -- ] || usage "expected -- before the jacktrip command"
    shift 5
    log_file="$logs_dir/jacktrip-$end.log"
    command -v "$1" >/dev/null 2>&1 || {
        printf 'state=missing\nmessage=%s is not installed (Debian package jacktrip)\n' "$1"
        exit 1
    }
    case $(jack_state "$server") in
        missing)
            printf 'state=no-jack-tools\nmessage=jack_lsp is not installed (Debian package jackd2)\n'
            exit 1 ;;
        down)
            printf 'state=no-server\nmessage=no JACK server named %s runs\n' "$server"
            exit 1 ;;
    esac
    if find_end "$end" "$token" "$1"; then
        printf 'state=already-running pid=%s\n' "$pid"
        exit 0
    fi
    for _check in $checks; do
        _proto=${_check%%:*}
        _port=${_check#*:}
        if port_busy "$_proto" "$_port"; then
            printf 'state=port-in-use\nmessage=%s port %s is already in use\n' \
                "$(echo "$_proto" | tr '[:lower:]' '[:upper:]')" "$_port"
            exit 1
        fi
    done
    mkdir -p -- "$state_dir" "$logs_dir" || { printf 'state=error\nmessage=cannot create %s or %s\n' "$state_dir" "$logs_dir" ; exit 1 ; }
    rm -f -- "$pid_file"
    _offset=0
    [ -f "$log_file" ] && _offset=$(wc -c <"$log_file")
    printf '=== %s %s %s: %s\n' "$(date -u '+%Y-%m-%dT%H:%M:%SZ')" "$START_MARK" "$end" "$*" \
        >>"$log_file" || { printf 'state=error\nmessage=cannot write %s\n' "$log_file" ; exit 1 ; }
    # The end's own process writes its record (pid, start time, boot id, token) and execs
    # jacktrip, keeping that pid; setsid and stdio away from the channel: it outlives the SSH
    # session, which closes when this script ends.
    # shellcheck disable=SC2016 # $$ and $1.. are for the inner shell
    setsid -f sh -c '_start=$(read -r _s </proc/$$/stat && _s=${_s##*)} && set -f &&
            set -- $_s && shift 19 && printf %s "$1") || exit 126
        printf "%s %s %s %s\n" "$$" "$_start" "$2" "$3" >"$1.$$" && mv -f -- "$1.$$" "$1" ||
            exit 126
        JACK_DEFAULT_SERVER=$4
        export JACK_DEFAULT_SERVER
        shift 4
        exec "$@"' jacktrip-start "$pid_file" "$this_boot" "$token" "$server" "$@" \
        </dev/null >>"$log_file" 2>&1 ||
        { printf 'state=error\nmessage=setsid failed (see %s)\n' "$log_file" ; exit 1 ; }
    _wait=50
    until read_record "$pid_file"; do
        [ "$_wait" -gt 0 ] || { printf 'state=error\nmessage=no pid file within 5 s (see %s)\n' "$log_file" ; exit 1 ; }
        sleep 0.1
        _wait=$((_wait - 1))
    done
    # jacktrip fails at once on a port in use (and exits 0 for a TCP one): 1 s tells.
    _left=10
    while is_ours "$pid" "$start" "$boot"; do
        if [ "$_left" -le 0 ]; then
            printf 'state=started pid=%s\n' "$pid"
            exit 0
        fi
        sleep 0.1
        _left=$((_left - 1))
    done
    rm -f -- "$pid_file"
    printf 'state=died pid=%s\n--- begin log_tail\n' "$pid"
    _tail=$(tail -c +"$((_offset + 1))" -- "$log_file" 2>/dev/null | tail -n 20)
    [ -z "$_tail" ] || printf '%s\n' "$_tail"
    printf '%s\n' '--- end log_tail'
    exit 1
}

do_probe() {
    [ "$#" -eq 2 ] || usage "probe needs JACKTRIP SERVER"
    program=$1
    if command -v "$program" >/dev/null 2>&1; then echo jacktrip=ok; else echo jacktrip=missing; fi
    echo "jack=$(jack_state "$2")"
    for _file in "$state_dir"/*.pid; do
        [ -f "$_file" ] || continue
        _end=${_file##*/}
        _end=${_end%.pid}
        _token=
        if read_record "$_file"; then
            _token=${_rest%% *}
        fi
        if [ -n "$_token" ] && find_end "$_end" "$_token" "$program"; then
            _connected=0
            connected "$logs_dir/jacktrip-$_end.log" && _connected=1
            printf 'end=%s state=running pid=%s token=%s connected=%s\n' "$_end" "$pid" \
                "$_token" "$_connected"
        else
            printf 'end=%s state=dead\n' "$_end"
        fi
    done
    # /proc/PID/comm through `read` (no fork per process; the kernel keeps 15 characters of
    # the name), the command line only for the matches.
    _comm_want=$(printf '%.15s' "${program##*/}")
    for _dir in /proc/[0-9]*; do
        _comm=
        read -r _comm 2>/dev/null <"$_dir/comm" || continue
        [ "$_comm" = "$_comm_want" ] || continue
        _pid=${_dir#/proc/}
        alive "$_pid" || continue
        _args=$(tr '\0\n' '  ' 2>/dev/null <"$_dir/cmdline")
        printf 'proc=%s %s\n' "$_pid" "${_args% }"
    done
    echo '--- begin ports'
    if command -v jack_lsp >/dev/null 2>&1; then
        JACK_DEFAULT_SERVER=$2 jack_lsp 2>/dev/null
    fi
    echo '--- end ports'
    exit 0
}

case $action in
    start) do_start "$@" ;;
    stop) do_stop "$@" ;;
    probe) do_probe "$@" ;;
    *) usage "ACTION must be start, stop or probe, got \"$action\"" ;;
esac
