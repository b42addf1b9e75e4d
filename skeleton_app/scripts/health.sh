# health.sh: wait on the node until the daemon's health endpoint answers.
#
# Sent on stdin (nothing is left on the node):
#     sh -s -- TIMEOUT URL [URL...] < health.sh
#   TIMEOUT  seconds to keep trying (decimals allowed); each attempt is bounded by 2 s
#   URL      tried in turn on every round (e.g. the loopback address, then the node's own)
#
# Uses curl, else wget, else python3 (whichever the node has). Prints, on success:
#     state=healthy url=URL
#     --- begin body
#     the response body (JSON from the daemon)
#     --- end body
# and exits 0; when TIMEOUT passes first: `state=unhealthy` and `message=` with the last error,
# exit 1; no HTTP client at all: `state=error`, exit 2. POSIX sh only; every expansion is quoted.

set -u

[ "$#" -ge 2 ] || { printf 'state=error\nmessage=expected TIMEOUT URL...\n'; exit 2; }
timeout=$1
shift
case $timeout in
    '' | *[!0-9.]* | *.*.*) printf 'state=error\nmessage=TIMEOUT must be a number\n'; exit 2 ;;
esac
int=${timeout%%.*}
tenths=$((${int:-0} * 10 + 10))

if command -v curl >/dev/null 2>&1; then
    client=curl
elif command -v wget >/dev/null 2>&1; then
    client=wget
elif command -v python3 >/dev/null 2>&1; then
    client=python3
else
    printf 'state=error\nmessage=no curl, wget or python3 on this node to query the health endpoint\n'
    exit 2
fi

# get URL: print the body of a 2xx answer; false otherwise (the error on stderr).
get() {
    case $client in
        curl) curl -fsS --max-time 2 -- "$1" ;;
        wget) wget -q -T 2 -O - -- "$1" ;;
        python3)
            python3 -c 'import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
    sys.stdout.write(r.read().decode("utf-8", "replace"))' "$1"
            ;;
    esac
}

last=
start=$(date +%s)
while :; do
    for url in "$@"; do
        # stderr joins the body: on success the clients print nothing there, and on failure
        # it is the error to report.
        if body=$(get "$url" 2>&1); then
            printf 'state=healthy url=%s\n--- begin body\n%s\n--- end body\n' "$url" "$body"
            exit 0
        fi
        last=$(printf '%s\n' "$body" | tail -n 1)
    done
    now=$(date +%s)
    if [ "$(((now - start) * 10))" -ge "$tenths" ]; then
        printf 'state=unhealthy\nmessage=no answer from %s within %s s: %s\n' "$*" "$timeout" \
            "${last:-no error text}"
        exit 1
    fi
    sleep 0.5
done
