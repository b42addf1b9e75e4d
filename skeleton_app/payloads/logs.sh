# logs.sh: the node side of `skeleton cluster logs` (skeleton_app/ops/logs.py).
#
#     sh -s -- MODE APP_DIR LINES SINCE PATTERN MANAGER UNIT USER_UNIT MAX_LINE MAX_BYTES \
#               DAEMON_LOG [GLOB...]
#
#   MODE        collect: print each source's filtered tail, framed (below), then exit
#               follow:  print new lines of every source as they come, until stdin closes
#   APP_DIR     relative GLOBs are taken from here
#   LINES       the last LINES lines of each source (after the other filters)
#   SINCE       "" or epoch seconds: only lines at or after it. A line that starts with an
#               ISO-8601 time stamp (2024-05-01 12:00:00 or 2024-05-01T12:00:00) is kept or
#               dropped by it, and the lines that follow it (a traceback) with it; files whose
#               lines carry no stamp are filtered by modification time only. Stamps are read as
#               this node's local time; the journal applies SINCE itself.
#   PATTERN     "" or an extended regular expression (grep -E), matched byte-wise
#   MANAGER     process | systemd: with systemd the journal of UNIT is a source too
#   USER_UNIT   1: the unit is a user unit (journalctl --user)
#   MAX_LINE    collect: every line is cut to its first MAX_LINE bytes before anything else
#               reads it (`cut -b` streams: a 600 MB line never sits in memory here)
#   MAX_BYTES   collect: at most this many bytes of log in all, sources in order; a source
#               over what is left keeps its last bytes, and its STATUS says how many were cut
#   DAEMON_LOG  the daemon's log file (absolute)
#   GLOB...     the configured logs.files patterns
#
# collect prints, for each source, one record
#     "S" NUL KIND NUL NAME NUL STATUS NUL LENGTH NUL, then LENGTH bytes of filtered log
# KIND: daemon, file or journal; STATUS: ok, cut: N bytes, missing, unreadable, not a
# regular file, error: MESSAGE. A missing file is a record, not a failure: bytes pass through untouched.
#
# follow runs until its stdin reaches end of file (the controller closed the connection or
# went away), then stops every process it started: nothing keeps running on the node.
# Every value arrives as an argument; nothing is evaluated. POSIX sh, GNU coreutils/grep/awk.

set -u
# Byte-wise matching: binary bytes in a log never make grep give up or awk choke on encoding.
LC_ALL=C
export LC_ALL

if [ "$#" -lt 11 ]; then
    echo "logs.sh: expected MODE APP_DIR LINES SINCE PATTERN MANAGER UNIT USER_UNIT" \
        "MAX_LINE MAX_BYTES DAEMON_LOG" >&2
    exit 2
fi
mode=$1
app_dir=$2
lines=$3
since=$4
pattern=$5
manager=$6
unit=$7
user_unit=$8
shift 8
max_line=$1
max_bytes=$2
daemon_log=$3
shift 3

for n in "$lines" "$max_line" "$max_bytes"; do
    case $n in
        '' | *[!0-9]* | 0) echo "logs.sh: LINES, MAX_LINE and MAX_BYTES must be positive integers" >&2
                           exit 2 ;;
    esac
done
budget=$max_bytes
case $since in
    *[!0-9]*) echo "logs.sh: SINCE must be epoch seconds" >&2; exit 2 ;;
esac

cutoff=
if [ -n "$since" ]; then
    cutoff=$(date -d "@$since" '+%Y-%m-%d %H:%M:%S') || exit 2
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/skeleton-logs.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
# follow ends by a TERM to the whole group: exit through the EXIT trap, not around it, and
# only once every tail and grep (TERMed too) is gone: the session ends with the last of them.
trap 'wait; exit 143' TERM
: >"$tmp/seen"

# since_filter [FLUSH]: keep lines from the first time stamp >= cutoff on (see SINCE above).
since_filter() {
    if [ -z "$cutoff" ]; then
        cat
        return
    fi
    awk -v cutoff="$cutoff" -v flush="${1:-0}" -v keep=1 '
        {
            s = substr($0, 1, 19)
            sub(/T/, " ", s)
            if (s ~ /^[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]$/)
                keep = (s >= cutoff)
        }
        keep { print; if (flush) fflush() }'
}

grep_filter() {
    if [ -n "$pattern" ]; then
        grep -a -E -e "$pattern" "$@"
    else
        cat
    fi
}

# record KIND NAME STATUS [FILE]: one framed record; FILE's bytes count against the budget.
record() {
    len=0
    status=$3
    if [ -n "${4-}" ]; then len=$(wc -c <"$4" | tr -d ' '); fi
    if [ "$len" -gt "$budget" ]; then
        # Keep the newest bytes (these are tails), from the first whole line among them.
        tail -c "$budget" -- "$4" | sed 1d >"$tmp/kept"
        kept=$(wc -c <"$tmp/kept" | tr -d ' ')
        status="cut: $((len - kept)) bytes over --max-bytes"
        mv -f -- "$tmp/kept" "$4"
        len=$kept
    fi
    budget=$((budget - len))
    printf 'S\0%s\0%s\0%s\0%s\0' "$1" "$2" "$status" "$len"
    if [ "$len" -gt 0 ]; then cat -- "$4"; fi
}

# first_time PATH: succeed once per file (a glob may match the daemon log again).
first_time() {
    real=$(readlink -f -- "$1" 2>/dev/null) || real=$1
    grep -qxF -- "$real" "$tmp/seen" && return 1
    printf '%s\n' "$real" >>"$tmp/seen"
}

collect_file() {
    kind=$1
    path=$2
    if [ ! -e "$path" ] && [ ! -L "$path" ]; then
        record "$kind" "$path" missing
        return
    fi
    first_time "$path" || return 0
    if [ ! -f "$path" ]; then
        record "$kind" "$path" "not a regular file"
        return
    fi
    if [ ! -r "$path" ]; then
        record "$kind" "$path" unreadable
        return
    fi
    : >"$tmp/out"
    : >"$tmp/err"
    # Written before SINCE: no line of it can be newer.
    if [ -z "$since" ] || [ -n "$(find "$path" -maxdepth 0 -newermt "@$since" 2>/dev/null)" ]
    then
        { cut -b "1-$max_line" <"$path" | since_filter | grep_filter | tail -n "$lines"; } \
            >"$tmp/out" 2>"$tmp/err"
    fi
    if [ -s "$tmp/err" ]; then
        record "$kind" "$path" "error: $(head -n 1 "$tmp/err")" "$tmp/out"
    else
        record "$kind" "$path" ok "$tmp/out"
    fi
}

collect_journal() {
    if ! command -v journalctl >/dev/null 2>&1; then
        record journal "$unit" "error: journalctl not found"
        return
    fi
    set -- journalctl --no-pager -o short-iso -u "$unit"
    if [ "$user_unit" = 1 ]; then set -- "$@" --user; fi
    if [ -n "$since" ]; then set -- "$@" --since "@$since"; fi
    # Without a pattern journalctl can cut the tail itself (it reads from the end).
    if [ -z "$pattern" ]; then set -- "$@" -n "$lines"; fi
    { "$@" | cut -b "1-$max_line" | grep_filter | tail -n "$lines"; } >"$tmp/out" 2>"$tmp/err"
    if [ ! -s "$tmp/out" ] && [ -s "$tmp/err" ]; then
        record journal "$unit" "error: $(head -n 1 "$tmp/err")"
    else
        record journal "$unit" ok "$tmp/out"
    fi
}

# expand GLOB: one path per line in $tmp/paths (the pattern itself when nothing matches).
expand() {
    old_ifs=$IFS
    IFS=
    for f in $1; do printf '%s\n' "$f"; done >"$tmp/paths"
    IFS=$old_ifs
}

cd -- "$app_dir" 2>/dev/null || cd /

if [ "$mode" = collect ]; then
    collect_file daemon "$daemon_log"
    for pat in "$@"; do
        expand "$pat"
        while IFS= read -r f; do collect_file file "$f"; done <"$tmp/paths"
    done
    if [ "$manager" = systemd ]; then collect_journal; fi
    exit 0
fi

if [ "$mode" != follow ]; then
    echo "logs.sh: unknown MODE $mode" >&2
    exit 2
fi

# follow. Asynchronous lists get /dev/null as stdin, so keep the real one on fd 3 for the
# watcher: when it ends, the whole process group (every tail, grep, journalctl) goes.
exec 3<&0
(
    cat <&3 >/dev/null
    kill -TERM 0
) &
set -- "$daemon_log" "$@"
: >"$tmp/files"
for pat in "$@"; do
    expand "$pat"
    while IFS= read -r f; do
        if [ ! -e "$f" ] || first_time "$f"; then printf '%s\n' "$f" >>"$tmp/files"; fi
    done <"$tmp/paths"
done
set --
while IFS= read -r f; do set -- "$@" "$f"; done <"$tmp/files"
if [ -n "$since" ]; then
    tail -q -n +1 -F -- "$@" 2>/dev/null | since_filter 1 | grep_filter --line-buffered &
else
    tail -q -n "$lines" -F -- "$@" 2>/dev/null | grep_filter --line-buffered &
fi
if [ "$manager" = systemd ] && command -v journalctl >/dev/null 2>&1; then
    set -- journalctl --no-pager -o short-iso -f -n "$lines" -u "$unit"
    if [ "$user_unit" = 1 ]; then set -- "$@" --user; fi
    if [ -n "$since" ]; then set -- "$@" --since "@$since"; fi
    "$@" 2>/dev/null | grep_filter --line-buffered &
fi
wait
