# health.sh: wait on the node until the daemon's health endpoint answers.
#
# Sent on stdin (nothing is left on the node):
#     sh -s -- TIMEOUT URL [URL...] < health.sh
#   TIMEOUT  seconds to keep trying (decimals allowed); each attempt is bounded by 2 s
#   URL      tried in turn on every round (e.g. the loopback address, then the node's own)
#   $SKELETON_HEALTH_TOKEN_FILE  (optional) the daemon's token file: when readable, the token
#            is sent (`Authorization: Bearer`) so that /health answers with its details (pid,
#            versions), not just the liveness bit. It never appears on a command line: curl
#            reads the header from stdin (-K -), python3 from its environment; wget (which
#            could only take it as an argument) goes without it.
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

# python3 before wget: wget could send the token only on its command line.
if command -v curl >/dev/null 2>&1; then
    client=curl
elif command -v python3 >/dev/null 2>&1; then
    client=python3
elif command -v wget >/dev/null 2>&1; then
    client=wget
else
    printf 'state=error\nmessage=no curl, wget or python3 on this node to query the health endpoint\n'
    exit 2
fi

# get URL: print the body of a 2xx answer; false otherwise (the error on stderr).
# The token is read at every attempt: a daemon starting meanwhile writes a new one.
get() {
    token=
    if [ -n "${SKELETON_HEALTH_TOKEN_FILE:-}" ] && [ -r "$SKELETON_HEALTH_TOKEN_FILE" ]; then
        IFS= read -r token <"$SKELETON_HEALTH_TOKEN_FILE" || :
    fi
    case $client in
        curl)
            if [ -n "$token" ]; then
                printf 'header = "Authorization: Bearer %s"\n' "$token" |
                    curl -fsS --max-time 2 -K - -- "$1"
            else
                curl -fsS --max-time 2 -- "$1"
            fi
            ;;
        wget) wget -q -T 2 -O - -- "$1" ;;
        python3)
            SKELETON_HEALTH_TOKEN=$token python3 -c 'import os, sys, urllib.request
req = urllib.request.Request(sys.argv[1])
if os.environ.get("SKELETON_HEALTH_TOKEN"):
    req.add_header("Authorization", "Bearer " + os.environ["SKELETON_HEALTH_TOKEN"])
with urllib.request.urlopen(req, timeout=2) as r:
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
        had_token=0
        if [ -n "${SKELETON_HEALTH_TOKEN_FILE:-}" ] && [ -s "$SKELETON_HEALTH_TOKEN_FILE" ]; then
            had_token=1
        fi
        if body=$(get "$url" 2>&1); then
            # Sent without a token, yet the daemon has one now: it started between our look
            # at its token file and the request (it writes the file before it serves). Ask
            # again with the token, for the details (pid) a rolling restart compares.
            if [ "$had_token" = 0 ] && [ -n "${SKELETON_HEALTH_TOKEN_FILE:-}" ] &&
                [ -s "$SKELETON_HEALTH_TOKEN_FILE" ] && again=$(get "$url" 2>&1); then
                body=$again
            fi
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
