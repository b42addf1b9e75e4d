# fetch.sh PATH...: the node side of `skeleton cluster fetch`.
#
# For each PATH (absolute, or relative to the login's home, where the session starts) a GNU
# tar of it goes to stdout, its member names starting with the PATH's last component (the
# archives follow each other; the controller reads past the zero blocks between them).
# Symlinks are archived as links, never followed (tar's default: the controller skips them
# and names them); hard links as their content (--hard-dereference). A PATH that does not
# exist: `missing PATH` on stderr. Exit 1 when a PATH was missing or tar failed on one,
# after every other PATH was sent. The controller trusts none of this: it checks every name,
# type and size it reads (skeleton_app.ops.fetch_extract).
set -u
rc=0
for path in "$@"; do
    if [ ! -e "$path" ] && [ ! -L "$path" ]; then
        printf 'missing %s\n' "$path" >&2
        rc=1
        continue
    fi
    case $path in
        */*) dir=${path%/*}; base=${path##*/} ;;
        *) dir=.; base=$path ;;
    esac
    [ -n "$dir" ] || dir=/
    (cd -- "$dir" && exec tar -c -f - --format=gnu --hard-dereference -- "$base")
    code=$?
    # 1: a file changed while tar read it (a growing log): what was read is sent, padded.
    if [ "$code" -gt 1 ]; then
        rc=1
    fi
done
exit "$rc"
