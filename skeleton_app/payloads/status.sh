# uses: prelude
# status.sh: the one-round-trip node probe behind `skeleton cluster status`.
#
# Sent on stdin, so nothing is left on the node:
#     sh -s -- APP_DIR MANAGER PID_FILE LOCK_FILE UNIT USER_UNIT < status.sh
#   APP_DIR    the node's app dir (need not exist: disk space is then read from its nearest
#              existing parent); relative PID_FILE paths are relative to it
#   MANAGER    process | systemd
#   PID_FILE   process manager: the daemon's pid file, `PID START_TIME BOOT_ID` (daemon.sh)
#   LOCK_FILE  process manager: the lock the daemon holds for its whole life (daemon.sh)
#   UNIT       systemd manager: the unit name
#   USER_UNIT  1: `systemctl --user`, 0: the system manager
#
# Prints one `key=value` per line (the framing of skeleton_app/payloads/framing.py, read by
# ops/status_probe.py); a key is left out when its value could not be read. Multi-line output
# sits between `--- begin NAME` and `--- end NAME`:
#     probe=skeleton-status/1
#     hostname=node-01
#     daemon_manager=process
#     daemon_running=1 | 0 | unknown
#     daemon_pid=1234                     (when known)
#     daemon_detail=why, in words         (when not plainly running)
#     load=0.12 0.34 0.56
#     mem_total_kb=...  mem_available_kb=...
#     disk_path=/dir/df/looked/at  disk_total_kb=...  disk_free_kb=...  (free = usable by users)
#     uptime_s=12345.67
#     code_version=...                    (first line of APP_DIR/.skeleton-deploy/digest)
#     gpu_exit=N                          (127: no nvidia-smi; 124: it did not answer in time)
#     --- begin gpu                       (absent when gpu_exit=127)
#     nvidia-smi's stdout and stderr
#     --- end gpu
#     probe_end=1
#
# Each probe runs in its own subshell and the script always exits 0: one unreadable file or
# missing tool costs one key, never the whole report. No `set -u`/`set -e` for the same reason.
# Commands that might read stdin get /dev/null: stdin is this script, and whatever they read
# would be cut out of it. POSIX sh only (runs under dash); every expansion is quoted.

app_dir=${1-}
manager=${2-process}
pid_file=${3-}
lock_file=${4-}
unit=${5-}
user_unit=${6-0}

# nvidia-smi with a broken driver can hang for minutes; the status table should not.
# SKELETON_STATUS_GPU_TIMEOUT (whole seconds) overrides the limit, for tests.
gpu_timeout=${SKELETON_STATUS_GPU_TIMEOUT:-10}
case $gpu_timeout in
    '' | *[!0-9]*) gpu_timeout=10 ;;
esac

kv() {
    printf '%s=%s\n' "$1" "$2"
}


probe_hostname() {
    _host=
    read -r _host 2>/dev/null </proc/sys/kernel/hostname || _host=$(uname -n 2>/dev/null)
    [ -z "$_host" ] || kv hostname "$_host"
}

probe_daemon_process() {
    # Relative pid files are relative to the app dir, as daemon.sh reads them.
    if [ -n "$app_dir" ] && ! cd -- "$app_dir" 2>/dev/null; then
        case $pid_file in
            /*) ;;
            *)
                kv daemon_running 0
                kv daemon_detail "no app dir $app_dir"
                return
                ;;
        esac
    fi
    _found=0
    find_daemon || _found=$?
    case $_found in
        0)
            kv daemon_running 1
            kv daemon_pid "$pid"
            ;;
        2)
            kv daemon_running 1
            kv daemon_detail "the daemon holds the lock $lock_file, but neither $pid_file nor /proc names its pid"
            ;;
        *)
            kv daemon_running 0
            _why=$(record_problem)
            kv daemon_detail "${_why:-no pid file $pid_file}"
            ;;
    esac
}

probe_daemon_systemd() {
    if ! command -v systemctl >/dev/null 2>&1; then
        kv daemon_running unknown
        kv daemon_detail "systemctl not found"
        return
    fi
    if [ "$user_unit" = 1 ]; then
        set -- --user
    else
        set --
    fi
    # is-active prints the state even when it exits non-zero (inactive, failed, ...).
    # stdin is this script (sh -s): no command may read from it.
    _state=$(systemctl "$@" is-active -- "$unit" </dev/null 2>/dev/null)
    case $_state in
        active | reloading) kv daemon_running 1 ;;
        activating | deactivating | inactive | failed | dead) kv daemon_running 0 ;;
        *) kv daemon_running unknown ;;
    esac
    kv daemon_detail "systemd unit $unit: ${_state:-no answer from systemctl}"
    _main=$(systemctl "$@" show --property=MainPID --value -- "$unit" </dev/null 2>/dev/null)
    case $_main in
        '' | 0 | *[!0-9]*) ;;
        *) kv daemon_pid "$_main" ;;
    esac
}

probe_daemon() {
    kv daemon_manager "$manager"
    case $manager in
        process) probe_daemon_process ;;
        systemd) probe_daemon_systemd ;;
        *)
            kv daemon_running unknown
            kv daemon_detail "unknown daemon manager \"$manager\""
            ;;
    esac
}

probe_load() {
    read -r _l1 _l5 _l15 _rest </proc/loadavg && kv load "$_l1 $_l5 $_l15"
}

probe_memory() {
    _total='' _avail='' _free='' _buffers='' _cached=''
    while read -r _key _value _unit; do
        case $_key in
            MemTotal:) _total=$_value ;;
            MemAvailable:) _avail=$_value ;;
            MemFree:) _free=$_value ;;
            Buffers:) _buffers=$_value ;;
            Cached:) _cached=$_value ;;
        esac
    done </proc/meminfo
    # Kernels before 3.14 have no MemAvailable: free + buffers + page cache is the usual estimate.
    if [ -z "$_avail" ] && [ -n "$_free" ] && [ -n "$_buffers" ] && [ -n "$_cached" ]; then
        _avail=$((_free + _buffers + _cached))
    fi
    [ -z "$_total" ] || kv mem_total_kb "$_total"
    [ -z "$_avail" ] || kv mem_available_kb "$_avail"
}

probe_disk() {
    # Before the first deploy the app dir may not exist yet; its parent's filesystem is where
    # it will land.
    _dir=${app_dir:-.}
    while [ ! -e "$_dir" ]; do
        _parent=$(dirname -- "$_dir") || return
        [ "$_parent" != "$_dir" ] || return
        _dir=$_parent
    done
    kv disk_path "$_dir"
    # -P: one line per filesystem whatever the name lengths. The filesystem name and the mount
    # point may contain spaces, so find the capacity column ("NN%") and read the two numbers
    # that precede it (1024-blocks Used Available Capacity).
    df -Pk -- "$_dir" 2>/dev/null | {
        read -r _header || exit 0
        read -r _line || exit 0
        set -f
        _p1='' _p2='' _p3=''
        for _field in $_line; do
            case $_field in
                *%)
                    case $_p3$_p1 in
                        *[!0-9]* | '') exit 0 ;;
                    esac
                    kv disk_total_kb "$_p3"
                    kv disk_free_kb "$_p1"
                    exit 0
                    ;;
            esac
            _p3=$_p2 _p2=$_p1 _p1=$_field
        done
    }
}

probe_uptime() {
    read -r _up _idle </proc/uptime && kv uptime_s "$_up"
}

probe_code_version() {
    _digest=$app_dir/.skeleton-deploy/digest
    [ -r "$_digest" ] || return
    _version=
    read -r _version _rest 2>/dev/null <"$_digest" || [ -n "$_version" ] || return
    kv code_version "$_version"
}

probe_gpu() {
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        kv gpu_exit 127
        return
    fi
    set -- nvidia-smi \
        --query-gpu=index,name,uuid,memory.total,memory.used,memory.free,utilization.gpu,temperature.gpu,power.draw,driver_version \
        --format=csv,noheader,nounits
    if command -v timeout >/dev/null 2>&1; then
        set -- timeout -k 2 "$gpu_timeout" "$@"
    fi
    # stderr is kept: a failing driver's message is the report. stdin is this script.
    _out=$("$@" </dev/null 2>&1)
    _rc=$?
    if [ "$_rc" = 124 ] && [ "$1" = timeout ]; then
        _out="nvidia-smi did not answer within $gpu_timeout s"
    fi
    kv gpu_exit "$_rc"
    printf '%s\n' '--- begin gpu'
    [ -z "$_out" ] || printf '%s\n' "$_out"
    printf '%s\n' '--- end gpu'
}

kv probe skeleton-status/1
(probe_hostname)
(probe_daemon)
(probe_load)
(probe_memory)
(probe_disk)
(probe_uptime)
(probe_code_version)
(probe_gpu)
kv probe_end 1
exit 0
