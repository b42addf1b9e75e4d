# prelude.sh: shell functions shared by the payloads that start with `# uses: prelude`
# (status.sh, daemon.sh). `skeleton_app.payloads` puts this text in front of such a script
# when it loads it, so both send, and run, the very same checks: "is our daemon running" can
# never get two answers. Not a script of its own: it only defines functions and `this_boot`.
# The functions read the caller's `pid_file` and `lock_file` when they are called.
# shellcheck shell=sh
#
# The daemon's identity is a record `PID START BOOT_ID` in the pid file: its pid, its start time
# (/proc/PID/stat field 22, clock ticks after boot) and the boot it started in. A recycled pid
# has another start time, and after a reboot there is another boot id: neither is ever taken for
# our daemon. Any command line works, since nothing looks at it. A second, independent witness:
# start takes an exclusive flock on the lock file that the daemon inherits and holds for its
# whole life, so a held lock means a daemon lives whatever the pid file says (lost, corrupt,
# overwritten); the daemon is then found as the session leader holding the lock file open.

this_boot=
read -r this_boot 2>/dev/null </proc/sys/kernel/random/boot_id || this_boot=
this_boot=${this_boot:-unknown}

# read_stat PID: set st_state (R, S, Z, ...), st_pgrp, st_sid and st_start from /proc/PID/stat;
# false when there is no such process. Field 2, the command name, may hold spaces and ')', so
# the fields are counted from what follows the LAST ')'.
# shellcheck disable=SC2034 # status.sh has no use for st_pgrp (daemon.sh signals the group)
read_stat() {
    st_state='' st_pgrp='' st_sid='' st_start='' _stat=''
    [ -r "/proc/$1/stat" ] || return 1
    read -r _stat 2>/dev/null <"/proc/$1/stat" || [ -n "$_stat" ] || return 1
    case $_stat in
        *')'*) _stat=${_stat##*)} ;;
        *) return 1 ;;
    esac
    set -f
    # shellcheck disable=SC2086 # split the fields on purpose
    set -- $_stat
    set +f
    # After the name: $1 is field 3 (state), $3 field 5 (pgrp), $4 field 6 (session), $20 field 22.
    [ "$#" -ge 20 ] || return 1
    st_state=$1 st_pgrp=$3 st_sid=$4
    shift 19
    st_start=$1
}

# read_record FILE: set pid, start and boot from FILE's record; false (and pid empty) unless PID
# is a plain number > 1 and START a plain number. Refusing 0, 1 and negatives matters: `kill 0`
# signals our own process group, `kill -1` every process we may signal, pid 1 is init.
read_record() {
    pid='' start='' boot=''
    [ -f "$1" ] || return 1
    read -r pid start boot _rest 2>/dev/null <"$1" || [ -n "$pid" ] || return 1
    case $pid in
        '' | 0* | 1 | *[!0-9]* | ????????*) pid='' ; return 1 ;;
    esac
    case $start in
        '' | *[!0-9]* | ?????????????????????*) pid='' ; return 1 ;;
    esac
    [ -n "$boot" ] || { pid='' ; return 1 ; }
    return 0
}

# alive PID: a process exists and is not a zombie (a zombie's pid still shows in /proc).
alive() {
    read_stat "$1" && [ "$st_state" != Z ]
}

# is_ours PID START BOOT: PID is alive and is the process that started at START in boot BOOT.
# Our own shell is never ours.
is_ours() {
    [ "$1" != "$$" ] || return 1
    [ "$3" = "$this_boot" ] || return 1
    alive "$1" && [ "$st_start" = "$2" ]
}

# lock_held: some process holds the daemon's lock. A shared, non-blocking probe: it never waits
# and never takes the lock from the daemon. Without flock (or a lock file) we cannot tell: false.
lock_held() {
    [ -f "$lock_file" ] || return 1
    command -v flock >/dev/null 2>&1 || return 1
    ! flock -n -s "$lock_file" true </dev/null 2>/dev/null
}

# lock_holder: print the pid of the session leader that holds the lock file open (start runs the
# daemon through setsid with the locked descriptor); false when none is visible (say, another
# user's process). Never our own shell, never pid 1.
lock_holder() {
    for _fd in /proc/[0-9]*/fd/*; do
        # -ef (same file) is not in POSIX, but dash, bash and busybox ash all have it.
        # shellcheck disable=SC3013
        [ "$_fd" -ef "$lock_file" ] || continue
        _holder=${_fd#/proc/}
        _holder=${_holder%%/*}
        if [ "$_holder" != "$$" ] && [ "$_holder" != 1 ] && alive "$_holder" &&
            [ "$st_sid" = "$_holder" ]; then
            printf '%s\n' "$_holder"
            return 0
        fi
    done
    return 1
}

# find_daemon: set pid, start and boot to our running daemon's and return 0; 1 when no daemon
# runs; 2 when one runs (the lock is held) but its pid cannot be found. `via` says how it was
# found: record (the pid file) or lock (the pid file did not name it).
# shellcheck disable=SC2034 # status.sh has no use for via
find_daemon() {
    via=record
    if read_record "$pid_file" && is_ours "$pid" "$start" "$boot"; then
        return 0
    fi
    lock_held || return 1
    via=lock
    pid=$(lock_holder) || { pid='' ; return 2 ; }
    read_stat "$pid" || { pid='' ; return 2 ; }
    start=$st_start boot=$this_boot
    return 0
}

# record_problem: say why the pid file does not name a running daemon (empty when it is absent).
record_problem() {
    if [ ! -e "$pid_file" ]; then
        return 0
    fi
    if read_record "$pid_file"; then
        if alive "$pid"; then
            printf '%s\n' "pid $pid from $pid_file is another process (another start time or boot): left alone"
        else
            printf '%s\n' "stale pid file $pid_file: pid $pid is gone"
        fi
    else
        printf '%s\n' "pid file $pid_file does not hold a valid record (PID START_TIME BOOT_ID)"
    fi
}

# tenths SECONDS: print SECONDS as a whole number of tenths ("2" -> 20, "0.55" -> 5), for
# polling every 0.1 s with shell integer arithmetic; fails on anything but a plain number.
tenths() {
    case $1 in
        '' | . | *[!0-9.]* | *.*.* | ?????????????*) return 1 ;;
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
