# uses: prelude
# job.sh: one attempt of a voice job on its node (skeleton_app/ops/jobs/node.py drives it).
#
#   start APP_DIR ID N INPUT_NAME SHA256 COMMAND   (stdin: the input file's bytes; sent as
#                                                  `sh -c SCRIPT job.sh start ...`)
#   wait  APP_DIR ID N SECONDS MAX_BYTES OUTPUT REMOVE
#   run   APP_DIR ID N INPUT_NAME SHA256 SECONDS MAX_BYTES OUTPUT REMOVE COMMAND   (as start)
#   kill  APP_DIR ID N PGID GRACE
#   check APP_DIR [TOOL...] [-- DIST...]
#
# An attempt lives in APP_DIR/jobs/ID/aN/ (ID and N are integers):
#   in/NAME   the input, written as in/.NAME.part and renamed once its sha256 matched
#   tmp/      the command's {output} goes here while it runs; renamed to out/ when it ends
#   stdout, stderr   the command's
#   pgid      `PID START_TIME BOOT_ID` of the group leader (a recycled pid is never taken
#             for it; see prelude.sh)
#   exit      `RC STARTED ENDED` (seconds since boot), written through exit.tmp when it ended
#
# start: makes the directory, checks the input (an empty INPUT_NAME: no input, stdin is not
#   read), runs COMMAND with `sh -c` in APP_DIR, detached (setsid: its own session and process
#   group, stdin /dev/null), so a dropped SSH channel neither kills it nor loses its status.
#   Prints `state=started pgid=N`; `state=already-started pgid=N` when the attempt exists (a
#   start sent again never runs the command twice); `state=error` + `message=` (exit 1).
# wait: blocks until the command ended or SECONDS passed. Prints `state=running`, or
#   `state=ended` with exit_code=, started=, ended=, output_size=, output_truncated=0|1,
#   output_missing=0|1 and the blocks `stderr_tail` and `output`, both base64 (binary-safe;
#   the output holds at most MAX_BYTES bytes). OUTPUT is `-` (the command's stdout) or the
#   output file's name in out/; a missing or empty output file is output_missing=1. REMOVE=1
#   removes the attempt once it ended (after the reply is written). `state=lost` when the
#   command's process is gone without an exit status (the node rebooted, or it was killed),
#   `state=gone` when there is no such attempt.
# run: start, then wait, in one call (a short command costs one round trip, not two). Prints
#   `pgid=N` once the command runs, then the reply of wait; a failed start prints only
#   start's `state=error` (exit 1). Its wait arguments are checked before anything starts.
# kill: TERM to the attempt's process group, KILL after GRACE seconds, then removes the
#   attempt's directory. The group is the one in the pgid file, else PGID ("" or 0: none);
#   it is signalled only if its leader is the recorded process or a member carries this
#   attempt's SKELETON_JOB_DIR in its environment. Idempotent. Prints
#   `state=killed pgid=N signal=TERM|KILL` or `state=not-running`.
# check: one `missing_tool=NAME` line per TOOL not on PATH and one `missing_dist=NAME` per
#   distribution not installed in APP_DIR/.venv (`missing_venv=PATH` without one); then
#   `state=ok` or `state=missing`.
# Bad arguments: state=error, exit 2. POSIX sh only (runs under dash); every expansion quoted.

set -u
# The prelude's daemon lookups (find_daemon, lock_held) read these; job.sh uses none of them.
pid_file='' lock_file=''

usage() {
    printf 'state=error\nmessage=%s\n' "$1"
    exit 2
}

fail() {
    printf 'state=error\nmessage=%s\n' "$1"
    exit 1
}

# count NAME VALUE: VALUE is a plain non-negative integer (at most 18 digits).
count() {
    case $2 in
        '' | *[!0-9]* | ???????????????????*) usage "$1 must be a whole number, got \"$2\"" ;;
    esac
}


[ "$#" -ge 2 ] || usage "expected ACTION APP_DIR ..., got $# arguments"
action=$1
app_dir=$2
shift 2
case $app_dir in
    /*) ;;
    *) usage "APP_DIR must be an absolute path, got \"$app_dir\"" ;;
esac

# attempt ID N: set job_id, attempt and dir.
attempt() {
    count ID "$1"
    count N "$2"
    job_id=$1 attempt=$2
    dir="${app_dir%/}/jobs/$job_id/a$attempt"
}

# leader_alive: the recorded group leader still runs (same pid, start time and boot).
leader_alive() {
    read_record "$dir/pgid" && is_ours "$pid" "$start" "$boot"
}

# ------------------------------------------------------------------------------------ start

do_start() {
    [ "$#" -eq 5 ] || usage "start needs APP_DIR ID N INPUT_NAME SHA256 COMMAND"
    launch "$@"
    printf 'state=%s pgid=%s\n' "$started" "$pid"
}

# launch ID N INPUT_NAME SHA256 COMMAND: start the attempt, or find the one started before
# (a start sent twice never runs the command twice); sets pid and started (started or
# already-started). Exits with state=error when it cannot.
launch() {
    attempt "$1" "$2"
    input_name=$3 sha=$4 command=$5
    case $input_name in
        . | .. | .* | */* | *[!A-Za-z0-9._-]*) usage "bad input name \"$input_name\"" ;;
    esac
    [ -n "$command" ] || usage "COMMAND must not be empty"
    cd -- "$app_dir" 2>/dev/null || fail "cannot enter the app dir $app_dir"
    mkdir -p -- "${dir%/*}" 2>/dev/null || fail "cannot create ${dir%/*}"
    # mkdir is the claim: a start sent twice finds the first one's directory.
    if ! mkdir -- "$dir" 2>/dev/null; then
        _wait=50
        until read_record "$dir/pgid"; do
            [ -d "$dir" ] || fail "cannot create $dir"
            [ "$_wait" -gt 0 ] || fail "$dir exists but its command never started"
            sleep 0.1
            _wait=$((_wait - 1))
        done
        started=already-started
        return 0
    fi
    # From here on a failed start leaves nothing behind.
    trap 'rm -rf -- "$dir"' EXIT
    mkdir -- "$dir/in" "$dir/tmp" || fail "cannot create $dir"
    if [ -n "$input_name" ]; then
        _part="$dir/in/.$input_name.part"
        cat >"$_part" || fail "cannot write the input to $_part"
        _got=$(sha256sum <"$_part") || fail "sha256sum failed on the input"
        _got=${_got%% *}
        [ "$_got" = "$sha" ] ||
            fail "the input arrived damaged: sha256 $_got, expected $sha"
        mv -f -- "$_part" "$dir/in/$input_name" || fail "cannot rename the input"
    fi
    # The session leader writes its own record, runs the command, publishes tmp/ as out/
    # and writes `exit` last: whoever sees `exit` sees the outputs complete.
    # shellcheck disable=SC2016 # $$ and the $N are for the inner shell
    SKELETON_JOB_DIR=$dir setsid -f sh -c 'd=$1
        _s=$(read -r _s </proc/$$/stat && _s=${_s##*)} && set -f && set -- $_s &&
            shift 19 && printf %s "$1") || exit 126
        printf "%s %s %s\n" "$$" "$_s" "$2" >"$d/pgid.tmp" && mv -f -- "$d/pgid.tmp" "$d/pgid" ||
            exit 126
        read -r _t0 _rest </proc/uptime
        sh -c "$3" </dev/null >"$d/stdout" 2>"$d/stderr"
        _rc=$?
        [ ! -d "$d/tmp" ] || mv -f -- "$d/tmp" "$d/out"
        read -r _t1 _rest </proc/uptime
        printf "%s %s %s\n" "$_rc" "$_t0" "$_t1" >"$d/exit.tmp" && mv -f -- "$d/exit.tmp" "$d/exit"
        ' skeleton-job "$dir" "$this_boot" "$command" </dev/null >/dev/null 2>&1 ||
        fail "setsid failed to start the command"
    # The record appears within milliseconds; 10 s covers a loaded node.
    _wait=0
    until read_record "$dir/pgid"; do
        [ "$_wait" -lt 1000 ] || fail "the command did not start within 10 s"
        sleep 0.01
        _wait=$((_wait + 1))
    done
    trap - EXIT
    started=started
}

do_run() {
    [ "$#" -eq 9 ] ||
        usage "run needs APP_DIR ID N INPUT_NAME SHA256 SECONDS MAX_BYTES OUTPUT REMOVE COMMAND"
    # wait's arguments first: a bad one must not leave a command running.
    tenths "$5" >/dev/null || usage "SECONDS must be a number of seconds, got \"$5\""
    count MAX_BYTES "$6"
    case $7 in
        . | .. | */* | '') usage "bad output name \"$7\"" ;;
    esac
    launch "$1" "$2" "$3" "$4" "$9"
    printf 'pgid=%s\n' "$pid"
    do_wait "$1" "$2" "$5" "$6" "$7" "$8"
}

# ------------------------------------------------------------------------------------- wait

# block NAME FILE [MAX_BYTES]: FILE (its first MAX_BYTES bytes) base64-encoded in block NAME.
block() {
    printf -- '--- begin %s\n' "$1"
    if [ "$#" -ge 3 ]; then
        head -c "$3" -- "$2" | base64
    else
        base64 <"$2"
    fi
    printf -- '--- end %s\n' "$1"
}

do_wait() {
    [ "$#" -eq 6 ] || usage "wait needs APP_DIR ID N SECONDS MAX_BYTES OUTPUT REMOVE"
    attempt "$1" "$2"
    _left=$(tenths "$3") || usage "SECONDS must be a number of seconds, got \"$3\""
    count MAX_BYTES "$4"
    max_bytes=$4 output=$5 remove=$6
    case $output in
        -) out_file="$dir/stdout" ;;
        . | .. | */* | '') usage "bad output name \"$output\"" ;;
        *) out_file="$dir/out/$output" ;;
    esac
    if [ ! -d "$dir" ]; then
        printf 'state=gone\nmessage=no attempt %s\n' "$dir"
        exit 0
    fi
    # Poll every 0.01 s for the first 0.2 s (short jobs end in milliseconds), then every
    # 0.1 s; SECONDS counts both (in hundredths), so SECONDS=0 answers at once.
    _left=$((_left * 10)) _spent=0
    until [ -f "$dir/exit" ]; do
        if ! leader_alive; then
            # It may have written `exit` just before it went.
            [ -f "$dir/exit" ] && break
            printf 'state=lost\nmessage=the command of %s is gone without an exit status\n' "$dir"
            exit 0
        fi
        if [ "$_left" -le 0 ]; then
            printf 'state=running\n'
            exit 0
        fi
        if [ "$_spent" -lt 20 ]; then
            sleep 0.01
            _spent=$((_spent + 1)) _left=$((_left - 1))
        else
            sleep 0.1
            _left=$((_left - 10))
        fi
    done
    read -r _rc _t0 _t1 _rest <"$dir/exit" || _rc=
    count exit_code "$_rc"
    printf 'state=ended\nexit_code=%s\nstarted=%s\nended=%s\n' "$_rc" "$_t0" "$_t1"
    _missing=0 _size=0
    # Empty files are tested, not read: each fork counts when a job takes milliseconds.
    if [ -s "$out_file" ]; then
        _size=$(wc -c <"$out_file") || _size=0
    fi
    if [ "$_size" -eq 0 ] && [ "$output" != - ]; then
        _missing=1
    fi
    _trunc=0
    [ "$_size" -le "$max_bytes" ] || _trunc=1
    printf 'output_size=%s\noutput_truncated=%s\noutput_missing=%s\n' "$_size" "$_trunc" "$_missing"
    if [ -f "$dir/stderr" ]; then
        _tail=
        if [ -s "$dir/stderr" ]; then
            _tail=$(tail -c 4096 -- "$dir/stderr" | base64) || _tail=
        fi
        printf -- '--- begin stderr_tail\n%s\n--- end stderr_tail\n' "$_tail"
    fi
    [ "$_size" -eq 0 ] || block output "$out_file" "$max_bytes"
    if [ "$remove" = 1 ]; then
        rm -rf -- "$dir"
        rmdir -- "${dir%/*}" 2>/dev/null
    fi
    exit 0
}

# ------------------------------------------------------------------------------------- kill

# group_alive: some live process (not a zombie) is in process group $pgid.
group_alive() {
    for _p in /proc/[0-9]*; do
        _p=${_p#/proc/}
        read_stat "$_p" || continue
        [ "$st_pgrp" = "$pgid" ] && [ "$st_state" != Z ] && return 0
    done
    return 1
}

# group_ours: process group $pgid is this attempt's: its leader is the recorded process, or a
# member has SKELETON_JOB_DIR=$dir in its environment.
group_ours() {
    if read_record "$dir/pgid" && [ "$pid" = "$pgid" ] && is_ours "$pid" "$start" "$boot"; then
        return 0
    fi
    for _p in /proc/[0-9]*; do
        _p=${_p#/proc/}
        read_stat "$_p" || continue
        [ "$st_pgrp" = "$pgid" ] || continue
        [ "$st_state" != Z ] || continue
        tr '\0' '\n' <"/proc/$_p/environ" 2>/dev/null |
            grep -qxF -- "SKELETON_JOB_DIR=$dir" && return 0
    done
    return 1
}

do_kill() {
    [ "$#" -eq 4 ] || usage "kill needs APP_DIR ID N PGID GRACE"
    attempt "$1" "$2"
    pgid=$3
    _grace=$(tenths "$4") || usage "GRACE must be a number of seconds, got \"$4\""
    [ -n "$pgid" ] || pgid=0
    count PGID "$pgid"
    if read_record "$dir/pgid"; then
        pgid=$pid
    fi
    _state=not-running _signal=
    # 0 and 1 are never a group of ours: `kill -- -0` would be our own group, -1 everyone.
    if [ "$pgid" -gt 1 ] && group_ours; then
        kill -s TERM -- "-$pgid" 2>/dev/null
        _state=killed _signal=TERM
        _left=$_grace
        while group_alive; do
            if [ "$_left" -le 0 ]; then
                kill -s KILL -- "-$pgid" 2>/dev/null
                _signal=KILL
                # SIGKILL cannot be ignored; allow the kernel 5 s to finish the job.
                _left=50
                while group_alive; do
                    [ "$_left" -gt 0 ] || fail "process group $pgid still runs after SIGKILL"
                    sleep 0.1
                    _left=$((_left - 1))
                done
                break
            fi
            sleep 0.1
            _left=$((_left - 1))
        done
    fi
    rm -rf -- "$dir" || fail "cannot remove $dir"
    rmdir -- "${dir%/*}" 2>/dev/null
    if [ "$_state" = killed ]; then
        printf 'state=killed pgid=%s signal=%s\n' "$pgid" "$_signal"
    else
        printf 'state=not-running\n'
    fi
    exit 0
}

# ------------------------------------------------------------------------------------ check

do_check() {
    _missing=0
    while [ "$#" -gt 0 ] && [ "$1" != -- ]; do
        if ! command -v -- "$1" >/dev/null 2>&1; then
            printf 'missing_tool=%s\n' "$1"
            _missing=1
        fi
        shift
    done
    [ "$#" -eq 0 ] || shift
    if [ "$#" -gt 0 ]; then
        _py="${app_dir%/}/.venv/bin/python"
        if [ ! -x "$_py" ]; then
            printf 'missing_venv=%s\n' "${app_dir%/}/.venv"
            _missing=1
        else
            # Installed distributions, by name: an import would load every engine's
            # libraries (seconds for some) just to answer a preflight.
            # shellcheck disable=SC2016 # Python code
            _out=$("$_py" -c 'import sys
from importlib.metadata import PackageNotFoundError, version
for name in sys.argv[1:]:
    try:
        version(name)
    except PackageNotFoundError:
        print("missing_dist=" + name)' "$@" 2>&1) || fail "the .venv python failed: $_out"
            if [ -n "$_out" ]; then
                printf '%s\n' "$_out"
                _missing=1
            fi
        fi
    fi
    if [ "$_missing" = 0 ]; then
        printf 'state=ok\n'
    else
        printf 'state=missing\n'
    fi
    exit 0
}

case $action in
    start) do_start "$@" ;;
    run) do_run "$@" ;;
    wait) do_wait "$@" ;;
    kill) do_kill "$@" ;;
    check) do_check "$@" ;;
    *) usage "ACTION must be start, run, wait, kill or check, got \"$action\"" ;;
esac
