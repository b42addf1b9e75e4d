# bootstrap.sh: the node side of `skeleton cluster bootstrap` (a virtualenv in the app dir).
#
# Sent on stdin:
#     sh -s -- probe APP_DIR PYTHON < bootstrap.sh
#     sh -s -- install APP_DIR PYTHON DIGEST PIP_WHEEL PROJECT_WHEEL [REQUIREMENT...] < bootstrap.sh
#   APP_DIR        the node's app dir; the virtualenv is APP_DIR/.venv
#   PYTHON         the interpreter that makes the virtualenv (python3)
#   DIGEST         what the controller computed over the wheelhouse and the requirements;
#                  written to .venv/.skeleton-bootstrap only once the install succeeded
#   PIP_WHEEL      pip's wheel, a file name in .venv/.skeleton-wheels (pushed by rsync): pip
#                  runs from it, so the node needs neither ensurepip (Debian's python3-venv)
#                  nor a pip of its own
#   PROJECT_WHEEL  the project's wheel, a file name in .venv/.skeleton-wheels
#   REQUIREMENT    further requirements, installed from the same wheels only
#
# probe writes nothing and prints `key=value` lines: `python=missing` when PYTHON is not
# found, else `python=` + what `PYTHON --version` printed (checked by the controller before
# anything else: an interpreter too old for the probe code still gets a clear answer), then
# the interpreter's facts (impl, version, machine, libc, abi, soabi) and `digest=` with the
# digest of the last successful bootstrap (empty when none). Exit 0.
#
# install makes the virtualenv when there is none that works (`PYTHON -m venv --without-pip`),
# installs pip, the project and REQUIREMENTs with pip from the pushed wheels only
# (`--no-index`, and no pip configuration of the node's: nodes need no internet), reinstalls
# the project's own wheel (its version may not change when its code does), then records
# DIGEST. It prints
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
    pipwheel=${5:-}
    project=${6:-}
    [ $# -ge 6 ] || fail "install needs DIGEST, PIP_WHEEL and PROJECT_WHEEL"
    shift 6
    for wheel in "$pipwheel" "$project"; do
        [ -f "$wheels/$wheel" ] || fail "the wheel $wheel was not pushed to $wheels"
    done
    # A failed install must never look like the last good one.
    rm -f "$stamp"
    : >"$log" 2>/dev/null || fail "cannot write $log"
    if ! "$venv/bin/python" -c "" >/dev/null 2>&1; then
        # No virtualenv yet, or one whose interpreter is gone: make it (keeps the wheels).
        # Without pip: ensurepip took 9 s of a 15 s install here, and is a separate
        # package on Debian; pip comes from its wheel below.
        "$py" -m venv --without-pip "$venv" >>"$log" 2>&1 ||
            fail "$py -m venv failed: $(tail -n 1 "$log")"
    fi
    # Only our wheels: the node's pip configuration (an index, find-links, constraints)
    # must not change what is installed.
    PIP_CONFIG_FILE=/dev/null
    export PIP_CONFIG_FILE
    pip="$venv/bin/python $wheels/$pipwheel/pip --disable-pip-version-check --no-input"
    # The project's version may stay the same when its code changes: pip would keep the old
    # copy. Removing it first costs one short pip run; a --force-reinstall would redo every
    # dependency too.
    # shellcheck disable=SC2086 # $pip is a command line of our own, split on purpose
    $pip uninstall -y "${project%%-*}" >>"$log" 2>&1
    # --no-compile: byte-compiling every dependency (pygments, cryptography, ...) took most
    # of an install's CPU here; Python compiles what the daemon imports, once, on first use.
    # shellcheck disable=SC2086
    $pip install --no-index --no-compile --find-links "$wheels" "$wheels/$pipwheel" \
        "$wheels/$project" "$@" \
        >>"$log" 2>&1 || fail "pip install failed: $(grep -v '^ *$' "$log" | tail -n 1)"
    printf '%s\n' "$digest" >"$stamp.tmp" && mv -f "$stamp.tmp" "$stamp" ||
        fail "cannot write $stamp"
    echo "state=installed"
}

case "$action" in
    probe) probe ;;
    install) install "$@" ;;
    *) echo "state=error"; echo "message=unknown action '$action'"; exit 2 ;;
esac
