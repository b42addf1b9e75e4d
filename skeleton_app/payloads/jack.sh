# uses: prelude
# jack.sh: the node's JACK server (jackd) for `skeleton jack` (skeleton_app/ops/jack/server.py).
#
# Sent on stdin, so nothing but the pid file and the log is written to the node:
#     sh -s -- ACTION PID_FILE LOG_FILE SERVER JACKD STOP_GRACE START_TIMEOUT TOKEN [-- ARG...] < jack.sh
#   ACTION         status | start | stop | abort | connect | disconnect
#   PID_FILE       our jackd's identity `PID START_TIME BOOT_ID TOKEN` (written by jackd's own
#                  process before it execs): a recycled pid is never taken for our server, and
#                  /proc/PID/cmdline must name JACKD too
#   LOG_FILE       jackd's stdout and stderr; each start moves the last one to LOG_FILE.1, so the
#                  xruns it counts are this server's
#   SERVER         the JACK server name (jackd -n; the jack_* tools get JACK_DEFAULT_SERVER)
#   JACKD          the jackd program (a name on PATH or an absolute path)
#   STOP_GRACE     seconds between SIGTERM and SIGKILL (decimals allowed)
#   START_TIMEOUT  seconds start waits for the new server to answer jack_lsp
#   TOKEN          start: recorded with the pid; abort: stop the server only if its record holds
#                  this token (the start that a Ctrl-C interrupted, and nothing else)
#   ARG...         start: jackd's whole argv (JACKD first), run with exec, never eval'd;
#                  connect / disconnect: the two port names
#
# Reply (skeleton_app.payloads.framing): `state=STATE`, maybe `pid=N`, `signal=TERM|KILL`,
# `message=...`; status adds `rate=`, `period=`, `xruns=` and the `ports` block (jack_lsp -c -p
# verbatim); a start that failed adds the `log_tail` block.
#   status      running (0) | stopped (3, as LSB) | foreign (0: a server answers that we did
#               not start) | unresponsive (1: our jackd lives, the server does not answer) |
#               missing (1: jackd or jack_lsp not installed)
#   start       started (0) | already-running (0; ours or foreign: never a second jackd) |
#               died (1) | error (1: did not answer in time, stopped again) | missing (1)
#   stop        stopped (0) | not-running (0) | foreign (1: left running) | error (1)
#   abort       stopped (0; also when the start's own trap stopped it: PID_FILE.aborted
#               holds `TOKEN PID`) | not-running (0: no server of that start)
#   connect     connected (0) | error (1)      disconnect  disconnected (0) | error (1)
#   bad arguments: state=error, exit 2, nothing done
# POSIX sh only (runs under dash); every expansion is quoted.

set -u

usage() {
    printf 'state=error\nmessage=%s\n' "$1"
    exit 2
}

[ "$#" -ge 8 ] || usage "expected ACTION PID_FILE LOG_FILE SERVER JACKD STOP_GRACE START_TIMEOUT TOKEN [-- ARG...], got $# arguments"
action=$1
pid_file=$2
log_file=$3
server=$4
jackd=$5
stop_grace=$6
start_timeout=$7
token=$8
shift 8
if [ "$#" -gt 0 ]; then
    [ "$1" = -- ] || usage "expected -- before the arguments, got \"$1\""
    shift
fi
[ -n "$pid_file" ] || usage "PID_FILE must not be empty"
[ -n "$server" ] || usage "SERVER must not be empty"
stop_tenths=$(tenths "$stop_grace") || usage "STOP_GRACE must be a number of seconds, got \"$stop_grace\""
start_tenths=$(tenths "$start_timeout") || usage "START_TIMEOUT must be a number of seconds, got \"$start_timeout\""
# prelude.sh's lock functions read it; jackd holds no lock of ours.
lock_file=

# The jack_* tools talk to SERVER and never start a server of their own (a client's default).
JACK_DEFAULT_SERVER=$server
JACK_NO_START_SERVER=1
export JACK_DEFAULT_SERVER JACK_NO_START_SERVER

MISSING="is not installed on the node (Debian package jackd2)"

# tools_missing: print which of jackd and jack_lsp cannot be found; false when both are there.
tools_missing() {
    if ! command -v "$jackd" >/dev/null 2>&1; then
        printf '%s %s\n' "$jackd" "$MISSING"
        return 0
    fi
    if ! command -v jack_lsp >/dev/null 2>&1; then
        printf 'jack_lsp %s\n' "$MISSING"
        return 0
    fi
    return 1
}

# bounded CMD...: a jack tool may block on a wedged server; 5 s is plenty for a local socket.
bounded() {
    if command -v timeout >/dev/null 2>&1; then
        timeout 5 "$@"
    else
        "$@"
    fi
}

# answers: the server SERVER answers a client (its output is the port list).
answers() {
    bounded jack_lsp >/dev/null 2>&1
}

# is_jackd PID: /proc/PID/cmdline's first word names the same program as JACKD.
is_jackd() {
    _argv0=$(tr '\000' '\n' <"/proc/$1/cmdline" 2>/dev/null | head -n 1) || return 1
    [ -n "$_argv0" ] && [ "${_argv0##*/}" = "${jackd##*/}" ]
}

# find_ours: set pid, start, boot and rec_token from PID_FILE when it names our live jackd.
find_ours() {
    rec_token=
    read_record "$pid_file" || return 1
    read -r _p _s _b rec_token _rest <"$pid_file" 2>/dev/null || true
    is_ours "$pid" "$start" "$boot" && is_jackd "$pid"
}

ours_alive() {
    is_ours "$pid" "$start" "$boot"
}

# wait_while CHECK TENTHS: wait up to TENTHS tenths of a second while CHECK holds.
wait_while() {
    _left=$2
    while "$1"; do
        [ "$_left" -gt 0 ] || return 1
        sleep 0.1
        _left=$((_left - 1))
    done
    return 0
}

# signal_ours SIGNAL: jackd leads its own session and group (setsid): signal the group; the
# identity is checked again right before, a pid may be reused between two polls.
signal_ours() {
    ours_alive || return 1
    if [ "$st_pgrp" = "$pid" ]; then
        kill -s "$1" -- "-$pid" 2>/dev/null
    else
        kill -s "$1" "$pid" 2>/dev/null
    fi
}

# stop_ours: TERM, then KILL after the grace; sets stop_signal; false if it still lives.
stop_ours() {
    stop_signal=TERM
    signal_ours TERM
    if ! wait_while ours_alive "$stop_tenths"; then
        stop_signal=KILL
        signal_ours KILL
        wait_while ours_alive 50 || return 1
    fi
    rm -f -- "$pid_file"
    return 0
}

log_tail() {
    printf '%s\n' '--- begin log_tail'
    _tail=$(tail -n 20 -- "$log_file" 2>/dev/null)
    [ -z "$_tail" ] || printf '%s\n' "$_tail"
    printf '%s\n' '--- end log_tail'
}

# stale_note: say why PID_FILE names no running server, removing it (empty when it is absent).
stale_note() {
    [ -e "$pid_file" ] || return 0
    rm -f -- "$pid_file"
    printf 'message=stale pid file %s (its jackd is gone): removed\n' "$pid_file"
}

do_status() {
    if _why=$(tools_missing); then
        printf 'state=missing\nmessage=%s\n' "$_why"
        exit 1
    fi
    _rc=0
    if find_ours; then
        if answers; then
            printf 'state=running\npid=%s\n' "$pid"
        else
            printf 'state=unresponsive\npid=%s\nmessage=jackd (pid %s) runs but the server %s does not answer\n' "$pid" "$pid" "$server"
            exit 1
        fi
    elif answers; then
        printf 'state=foreign\nmessage=a JACK server named %s answers, not started by skeleton\n' "$server"
    else
        printf 'state=stopped\n'
        [ ! -e "$pid_file" ] || printf 'message=stale pid file %s (its jackd is gone)\n' "$pid_file"
        exit 3
    fi
    _rate=$(bounded jack_samplerate 2>/dev/null | tail -n 1)
    _period=$(bounded jack_bufsize 2>/dev/null | tail -n 1)
    case $_rate in '' | *[!0-9]*) ;; *) printf 'rate=%s\n' "$_rate" ;; esac
    case $_period in '' | *[!0-9]*) ;; *) printf 'period=%s\n' "$_period" ;; esac
    # xruns: the lines jackd logged about one since our start (JackTimedDriver::Process XRun,
    # JackEngine::XRun, ALSA's "xrun of at least"); a foreign server's log is not ours to read.
    if [ -n "$pid" ] && [ -f "$log_file" ]; then
        printf 'xruns=%s\n' "$(grep -ci 'xrun' -- "$log_file" 2>/dev/null || true)"
    fi
    printf '%s\n' '--- begin ports'
    bounded jack_lsp -c -p 2>/dev/null || _rc=$?
    printf '%s\n' '--- end ports'
    [ "$_rc" -eq 0 ] || printf 'message=jack_lsp failed (exit %s): the port list may be short\n' "$_rc"
    exit 0
}

do_stop() {
    if find_ours; then
        stop_ours || { printf 'state=error\npid=%s\nmessage=jackd (pid %s) still runs after SIGKILL\n' "$pid" "$pid"; exit 1; }
        printf 'state=stopped\npid=%s\nsignal=%s\n' "$pid" "$stop_signal"
        exit 0
    fi
    pid=
    _note=$(stale_note)
    if command -v jack_lsp >/dev/null 2>&1 && answers; then
        printf 'state=foreign\nmessage=a JACK server named %s answers but skeleton did not start it: left running\n' "$server"
        exit 1
    fi
    printf 'state=not-running\n'
    [ -z "$_note" ] || printf '%s\n' "$_note"
    exit 0
}

do_abort() {
    # Only the server of the interrupted start: its record holds the start's token (the check
    # of the command line is left out: the record is written before the exec of jackd).
    if read_record "$pid_file" && read -r _p _s _b rec_token _rest <"$pid_file" &&
        [ -n "$token" ] && [ "$rec_token" = "$token" ] && is_ours "$pid" "$start" "$boot"; then
        stop_ours || { printf 'state=error\npid=%s\nmessage=jackd (pid %s) still runs after SIGKILL\n' "$pid" "$pid"; exit 1; }
        printf 'state=stopped\npid=%s\nsignal=%s\n' "$pid" "$stop_signal"
        exit 0
    fi
    if [ -n "$token" ] && read -r _tok _pid _rest <"$pid_file.aborted" 2>/dev/null &&
        [ "$_tok" = "$token" ]; then
        rm -f -- "$pid_file.aborted"
        printf 'state=stopped\npid=%s\nmessage=stopped by the start itself at the interrupt\n' "$_pid"
        exit 0
    fi
    printf 'state=not-running\n'
    exit 0
}

# interrupted: the start's channel got SIGINT/SIGTERM (Ctrl-C on the controller): stop the
# jackd this start launched, so nothing is left half-started. The controller's abort is the
# second line of defence when this shell is killed before it gets here.
# The TERM that follows the INT must not cut this short; the note left beside the pid file
# tells the controller's abort that this start's jackd is already gone (its reply on this
# channel may never be read).
interrupted() {
    trap '' INT TERM HUP
    if read_record "$pid_file" && read -r _p _s _b rec_token _rest <"$pid_file" &&
        [ "$rec_token" = "$token" ] && is_ours "$pid" "$start" "$boot"; then
        stop_tenths=2
        stop_ours && printf '%s %s\n' "$token" "$pid" >"$pid_file.aborted"
    fi
    printf 'state=error\nmessage=interrupted: the new jackd was stopped again\n'
    exit 130
}

do_start() {
    [ "$#" -gt 0 ] || usage "start needs jackd's argv after --"
    if _why=$(tools_missing); then
        printf 'state=missing\nmessage=%s\n' "$_why"
        exit 1
    fi
    if find_ours; then
        printf 'state=already-running\npid=%s\n' "$pid"
        exit 0
    fi
    if answers; then
        printf 'state=already-running\nmessage=a JACK server named %s already answers (not started by skeleton): left as it is\n' "$server"
        exit 0
    fi
    command -v setsid >/dev/null 2>&1 || { printf 'state=error\nmessage=setsid is not installed on the node (util-linux)\n'; exit 1; }
    _note=$(stale_note)
    rm -f -- "$pid_file.aborted"
    mkdir -p -- "$(dirname -- "$log_file")" "$(dirname -- "$pid_file")" || {
        printf 'state=error\nmessage=cannot create the directories of %s and %s\n' "$log_file" "$pid_file"
        exit 1
    }
    [ ! -f "$log_file" ] || mv -f -- "$log_file" "$log_file.1"
    printf '=== %s jack.sh: starting: %s\n' "$(date -u '+%Y-%m-%dT%H:%M:%SZ')" "$*" >"$log_file" || {
        printf 'state=error\nmessage=cannot write the log %s\n' "$log_file"
        exit 1
    }
    trap interrupted INT TERM HUP
    # No D-Bus device reservation: a headless node has no session bus, and the dummy driver
    # reserves no device.
    JACK_NO_AUDIO_RESERVATION=1
    export JACK_NO_AUDIO_RESERVATION
    # setsid -f forks, so its pid is useless: jackd's own process writes its record (pid, start
    # time from its own /proc/PID/stat, boot id, this start's token) and then execs jackd,
    # keeping that pid and start time. Its stdio leaves the SSH channel, so the channel closes
    # when this script ends and jackd outlives the session.
    # shellcheck disable=SC2016 # $$ and $1 are for the inner shell
    setsid -f sh -c '_start=$(read -r _s </proc/$$/stat && _s=${_s##*)} && set -f &&
            set -- $_s && shift 19 && printf %s "$1") || exit 126
        printf "%s %s %s %s\n" "$$" "$_start" "$2" "$3" >"$1.$$" && mv -f -- "$1.$$" "$1" ||
            exit 126
        shift 3
        exec "$@"' skeleton-jackd-start "$pid_file" "$this_boot" "$token" "$@" \
        </dev/null >>"$log_file" 2>&1 || {
        printf 'state=error\nmessage=setsid failed to start jackd (see %s)\n' "$log_file"
        exit 1
    }
    _wait=100
    until read_record "$pid_file"; do
        if [ "$_wait" -le 0 ]; then
            printf 'state=error\nmessage=jackd did not write its pid file %s within 10 s\n' "$pid_file"
            log_tail
            exit 1
        fi
        sleep 0.1
        _wait=$((_wait - 1))
    done
    _left=$start_tenths
    until answers; do
        if ! ours_alive; then
            rm -f -- "$pid_file"
            printf 'state=died\npid=%s\nmessage=jackd exited at start; the last lines of %s:\n' "$pid" "$log_file"
            log_tail
            exit 1
        fi
        if [ "$_left" -le 0 ]; then
            stop_ours
            printf 'state=error\npid=%s\nmessage=the server did not answer within %s s: jackd stopped again; the last lines of %s:\n' "$pid" "$start_timeout" "$log_file"
            log_tail
            exit 1
        fi
        sleep 0.2
        _left=$((_left - 2))
    done
    trap - INT TERM HUP
    printf 'state=started\npid=%s\n' "$pid"
    [ -z "$_note" ] || printf '%s\n' "$_note"
    exit 0
}

do_ports() {
    [ "$#" -eq 2 ] || usage "$action needs two port names, got $# arguments"
    if _why=$(tools_missing); then
        printf 'state=missing\nmessage=%s\n' "$_why"
        exit 1
    fi
    _tool=jack_$action
    command -v "$_tool" >/dev/null 2>&1 || { printf 'state=missing\nmessage=%s %s\n' "$_tool" "$MISSING"; exit 1; }
    if _err=$(bounded "$_tool" "$1" "$2" 2>&1 >/dev/null); then
        printf 'state=%sed\n' "$action"
        exit 0
    fi
    printf 'state=error\nmessage=%s\n' "$(printf '%s\n' "$_err" | grep -v '^$' | tail -n 1)"
    exit 1
}

case $action in
    status) do_status ;;
    start) do_start "$@" ;;
    stop) do_stop ;;
    abort) do_abort ;;
    connect | disconnect) do_ports "$@" ;;
    *) usage "ACTION must be status, start, stop, abort, connect or disconnect, got \"$action\"" ;;
esac
