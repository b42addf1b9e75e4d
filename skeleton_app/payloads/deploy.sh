# deploy.sh: the node's side of `skeleton cluster deploy`: the lock, the digest, the commit.
#
# The script is the `-c` argument, because stdin carries the controller's requests for as long
# as the lock is held:
#     sh -c "$(cat deploy.sh)" skeleton-deploy DEST WAIT OWNER RSYNC
#   DEST    the deploy destination (created if missing); state lives in DEST/.skeleton-deploy
#   WAIT    seconds to wait for another deploy's lock (decimals allowed)
#   OWNER   who deploys, in words ("alice@laptop"), shown to a deploy that finds the lock taken
#   RSYNC   the node's rsync command, checked on `begin`
#
# The lock is flock(1) on DEST/.skeleton-deploy/lock, held by this shell until it exits. It exits
# when the controller closes stdin, or when the SSH connection dies (stdin then ends as well):
# a killed deploy never leaves a stale lock behind. The receiving rsync runs under
# `flock DEST/.skeleton-deploy` (the directory itself: the writer lock, taken through the
# controller's --rsync-path): it may outlive a killed controller's session by a moment, so
# `begin` waits for that lock too before any write.
#
# Output, one `key=value` per line:
#     state=locked | state=busy | state=error
#     owner=OWNER since=TIME       (busy: who holds the lock; TIME is UTC, ISO 8601)
#     digest=LINE                  (locked: each line of DEST/.skeleton-deploy/digest, in order)
#     message=...                  (error)
#     ready                        (locked: requests are read from now on)
# Requests on stdin, one per line, each answered by one line:
#     own       record the owner (a deploy that holds the lock for long)  -> ok | error=...
#     begin     record the owner, wait (WAIT seconds) for the writer lock, check that RSYNC
#               runs, then remove the digest (a deploy that dies from here on must not be
#               mistaken for a finished one)
#                                      -> ok | error=writer-busy | error=rsync-missing | error=...
#     commit    the following lines, up to a line holding only ".", become the new digest,
#               written atomically                             -> ok | error=...
#     (EOF)     exit 0; the lock goes with this shell
# Exit codes: 0 done, 2 bad arguments, 75 lock busy, 1 other errors.
# POSIX sh only (runs under dash); every expansion is quoted.

set -u

[ "$#" -eq 4 ] || {
    printf 'state=error\nmessage=expected DEST WAIT OWNER RSYNC, got %s arguments\n' "$#"
    exit 2
}
dest=$1
wait=$2
owner=$3
rsync_cmd=$4
state_dir=$dest/.skeleton-deploy

case $dest in
    /*) ;;
    *) printf 'state=error\nmessage=DEST must be an absolute path, got "%s"\n' "$dest"; exit 2 ;;
esac
case $wait in
    '' | *[!0-9.]* | *.*.*) printf 'state=error\nmessage=WAIT must be a number, got "%s"\n' "$wait"; exit 2 ;;
esac

# Every command run here costs a fork and an exec on each node of every deploy, no-change
# ones included: the common path runs only flock.
if [ ! -d "$state_dir" ] && ! mkdir -p -- "$state_dir" 2>/dev/null; then
    printf 'state=error\nmessage=cannot create %s: %s\n' "$state_dir" \
        "$(mkdir -p -- "$state_dir" 2>&1 | tail -n 1)"
    exit 1
fi
command -v flock >/dev/null 2>&1 || {
    printf 'state=error\nmessage=flock (util-linux) is not installed on this node\n'
    exit 1
}
# fd 9 stays open, and the lock held, until this shell exits.
if ! exec 9>>"$state_dir/lock"; then
    printf 'state=error\nmessage=cannot open the lock file %s\n' "$state_dir/lock"
    exit 1
fi
if ! flock -w "$wait" 9; then
    holder=
    [ -f "$state_dir/owner" ] && read -r holder <"$state_dir/owner"
    printf 'state=busy\n%s\n' "${holder:-owner=unknown since=unknown}"
    exit 75
fi
printf 'state=locked\n'
if [ -f "$state_dir/digest" ]; then
    while IFS= read -r line || [ -n "$line" ]; do
        printf 'digest=%s\n' "$line"
    done <"$state_dir/digest"
fi
printf 'ready\n'

# own: record who holds the lock, for a deploy that finds it taken. Only a deploy that goes
# ahead (or restarts the daemon) holds it for long, so a no-change deploy skips the forks.
# Written through a temporary name: a waiting deploy reads either the old owner or the new.
own() {
    printf 'owner=%s since=%s\n' "$owner" "$(date -u '+%Y-%m-%dT%H:%M:%SZ')" \
        >"$state_dir/owner.$$" && mv -f -- "$state_dir/owner.$$" "$state_dir/owner"
}

while IFS= read -r request; do
    case $request in
        own)
            if own; then printf 'ok\n'; else printf 'error=cannot write %s\n' "$state_dir/owner"; fi
            ;;
        begin)
            own
            if ! flock -w "$wait" "$state_dir" true; then
                printf 'error=writer-busy\n'
                continue
            fi
            # The binary may exist and still fail (a broken install, a stub): run it.
            if ! "$rsync_cmd" --version >/dev/null 2>&1; then
                printf 'error=rsync-missing\n'
                continue
            fi
            if rm -f -- "$state_dir/digest"; then
                printf 'ok\n'
            else
                printf 'error=cannot remove %s\n' "$state_dir/digest"
            fi
            ;;
        commit)
            tmp=$state_dir/digest.$$
            : >"$tmp" 2>/dev/null || failed=1
            failed=${failed:-0}
            while IFS= read -r line; do
                [ "$line" = . ] && break
                printf '%s\n' "$line" >>"$tmp" 2>/dev/null || failed=1
            done
            if [ "$failed" = 0 ] && mv -f -- "$tmp" "$state_dir/digest" 2>/dev/null; then
                printf 'ok\n'
            else
                rm -f -- "$tmp"
                printf 'error=cannot write %s\n' "$state_dir/digest"
            fi
            failed=0
            ;;
        *)
            printf 'error=unknown request\n'
            ;;
    esac
done
exit 0
