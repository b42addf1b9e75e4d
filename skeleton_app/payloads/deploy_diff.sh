# deploy_diff.sh: the node's side of `skeleton cluster deploy --diff` (ops/deploy/diff.py):
# the node's copies of the files a deploy would change, in one round trip, read-only.
#
#     sh -c "$(cat deploy_diff.sh)" skeleton-diff DEST FILE_CAP BUDGET
#   DEST      the deploy destination (absolute)
#   FILE_CAP  the most bytes sent of one file; a bigger file is named with its size only
#   BUDGET    the most bytes sent in all; files past it are named with their size only
# stdin: one request per line, `r PATH` (send the file) or `s PATH` (only say what is there);
# PATH is relative to DEST (the controller checked it: no `..`, no leading `/`). Requests are
# numbered from 0 in order; replies name the number, never the path.
#
# Output (skeleton_app.payloads.framing):
#     dest=ok | dest=absent
#     entry=N STATUS [SIZE]    STATUS: data (a block N follows: the file's bytes in base64),
#                              present (an `s` request: a regular file), absent, symlink (the
#                              path or one of its directories is a symlink: never followed),
#                              notfile (a directory, device, ...), unreadable, big (over
#                              FILE_CAP), budget (over BUDGET)
#     --- begin N / base64 lines / --- end N
# Nothing is written on the node. POSIX sh plus GNU coreutils (stat, dd iflag=nofollow,
# head, base64); every expansion is quoted.

set -u

[ "$#" -eq 3 ] || { printf 'error=expected DEST FILE_CAP BUDGET, got %s arguments\n' "$#"; exit 2; }
dest=$1
cap=$2
left=$3
case $dest in /*) ;; *) printf 'error=DEST must be absolute\n'; exit 2 ;; esac
case $cap$left in '' | *[!0-9]*) printf 'error=FILE_CAP and BUDGET must be numbers\n'; exit 2 ;; esac

if [ -L "$dest" ] || ! cd -P -- "$dest" 2>/dev/null; then
    # A symlinked destination is not ours to read through; a missing one has no copies.
    echo "dest=absent"
    exit 0
fi
root=$(pwd -P)
echo "dest=ok"

# entry N MODE PATH: one reply. Each directory of PATH is checked before we step into it, and
# where we landed is checked again (a directory swapped for a symlink meanwhile): a symlink
# anywhere on the path is refused, never followed.
entry() {
    n=$1
    mode=$2
    rest=$3
    cd -P -- "$root" || { echo "entry=$n unreadable"; return; }
    while :; do
        case $rest in
            */*) comp=${rest%%/*}; rest=${rest#*/} ;;
            *) break ;;
        esac
        if [ -L "./$comp" ]; then echo "entry=$n symlink"; return; fi
        if [ ! -e "./$comp" ]; then echo "entry=$n absent"; return; fi
        if [ ! -d "./$comp" ]; then echo "entry=$n notfile"; return; fi
        cd -P -- "./$comp" 2>/dev/null || { echo "entry=$n unreadable"; return; }
    done
    case $(pwd -P)/ in "$root"/*) ;; *) echo "entry=$n symlink"; return ;; esac
    name=./$rest
    if [ -L "$name" ]; then echo "entry=$n symlink"; return; fi
    if [ ! -e "$name" ]; then echo "entry=$n absent"; return; fi
    if [ ! -f "$name" ]; then echo "entry=$n notfile"; return; fi
    size=$(stat -c %s -- "$name" 2>/dev/null) || { echo "entry=$n unreadable"; return; }
    if [ "$mode" = s ]; then echo "entry=$n present $size"; return; fi
    if [ ! -r "$name" ]; then echo "entry=$n unreadable $size"; return; fi
    if [ "$size" -gt "$cap" ]; then echo "entry=$n big $size"; return; fi
    if [ "$size" -gt "$left" ]; then echo "entry=$n budget $size"; return; fi
    left=$((left - size))
    echo "entry=$n data $size"
    echo "--- begin $n"
    # nofollow: a symlink planted after the check above is refused by the kernel, not read.
    # At most FILE_CAP+1 bytes: a file that grew since stat shows as too big, not cut short.
    dd if="$name" iflag=nofollow bs=65536 status=none 2>/dev/null | head -c "$((cap + 1))" |
        base64
    echo "--- end $n"
}

n=0
while IFS= read -r line; do
    case $line in
        'r '?* | 's '?*) entry "$n" "${line%% *}" "${line#* }" ;;
        *) echo "entry=$n unreadable" ;;
    esac
    n=$((n + 1))
done
exit 0
