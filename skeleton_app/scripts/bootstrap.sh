# bootstrap.sh: the node side of `skeleton cluster bootstrap` (a virtualenv in the app dir).
#
# Sent on stdin:
#     sh -s -- probe APP_DIR PYTHON < bootstrap.sh
#     sh -s -- install APP_DIR PYTHON DIGEST PROJECT_WHEEL [REQUIREMENT...] < bootstrap.sh
#   APP_DIR        the node's app dir; the virtualenv is APP_DIR/.venv
#   PYTHON         the interpreter that makes the virtualenv (python3)
#   DIGEST         what the controller computed over the wheelhouse and the requirements;
#                  written to .venv/.skeleton-bootstrap only once the install succeeded
#   PROJECT_WHEEL  the project's wheel, a file name in .venv/.skeleton-wheels (pushed by rsync)
#   REQUIREMENT    further requirements, installed from the same wheels only
#
# probe writes nothing and prints `key=value` lines: `python=missing` when PYTHON is not
# found, else `python=` + what `PYTHON --version` printed (checked by the controller before
# anything else: an interpreter too old for the probe code still gets a clear answer), then
# the interpreter's facts (impl, version, machine, libc, abi, soabi) and `digest=` with the
# digest of the last successful bootstrap (empty when none). Exit 0.
#
# install makes or updates the virtualenv (`PYTHON -m venv`, idempotent), installs with pip
# from the pushed wheels only (`--no-index`: nodes need no internet), reinstalls the project's
# own wheel (its version may not change when its code does), then records DIGEST. It prints
# `state=installed` (exit 0) or `state=error` and `message=` with the last line pip printed
# (exit 1). pip's whole output goes to .venv/.skeleton-bootstrap.log.
# POSIX sh only (runs under dash); every expansion is quoted.

set -u

action=${1:-}
app=${2:-}
py=${3:-python3}
[ -n "$app" ] || { echo "state=error"; echo "message=no app dir given"; exit 2; }

venv="$app/.venv"
wheels="$venv/.skeleton-wheels"
stamp="$venv/.skeleton-bootstrap"
log="$venv/.skeleton-bootstrap.log"

probe() {
    if ! command -v "$py" >/dev/null 2>&1; then
        echo "python=missing"
        return 0
    fi
    echo "python=$("$py" --version 2>&1 | head -n 1)"
    "$py" -c '
import platform, sys, sysconfig
print("impl=" + sys.implementation.name)
print("version=%d.%d.%d" % sys.version_info[:3])
print("machine=" + platform.machine())
libc = platform.libc_ver()
print("libc=%s %s" % libc)
print("abi=" + sys.abiflags)
print("soabi=" + (sysconfig.get_config_var("SOABI") or ""))
' 2>/dev/null
    digest=""
    if [ -r "$stamp" ] && "$venv/bin/python" -c "" >/dev/null 2>&1; then
        digest=$(head -n 1 "$stamp")
    fi
    echo "digest=$digest"
}

fail() {
    echo "state=error"
    echo "message=$1"
    exit 1
}

install() {
    digest=${4:-}
    project=${5:-}
    shift 5 || fail "install needs DIGEST and PROJECT_WHEEL"
    [ -f "$wheels/$project" ] || fail "the wheel $project was not pushed to $wheels"
    # A failed install must never look like the last good one.
    rm -f "$stamp"
    : >"$log" 2>/dev/null || fail "cannot write $log"
    if ! "$venv/bin/python" -c "" >/dev/null 2>&1; then
        # No virtualenv yet, or one whose interpreter is gone: make it (keeps the wheels).
        "$py" -m venv "$venv" >>"$log" 2>&1 ||
            fail "$py -m venv failed: $(tail -n 1 "$log") (Debian: apt-get install python3-venv)"
    fi
    pip="$venv/bin/python -m pip --disable-pip-version-check --no-input"
    # shellcheck disable=SC2086 # $pip is a command line of our own, split on purpose
    $pip install --no-index --find-links "$wheels" "$wheels/$project" "$@" >>"$log" 2>&1 ||
        fail "pip install failed: $(grep -v '^ *$' "$log" | tail -n 1)"
    # shellcheck disable=SC2086
    $pip install --no-index --no-deps --force-reinstall "$wheels/$project" >>"$log" 2>&1 ||
        fail "pip install failed: $(grep -v '^ *$' "$log" | tail -n 1)"
    printf '%s\n' "$digest" >"$stamp.tmp" && mv -f "$stamp.tmp" "$stamp" ||
        fail "cannot write $stamp"
    echo "state=installed"
}

case "$action" in
    probe) probe ;;
    install) install "$@" ;;
    *) echo "state=error"; echo "message=unknown action '$action'"; exit 2 ;;
esac
