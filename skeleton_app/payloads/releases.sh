# releases.sh: the node's side of `deploy.strategy: releases` (Capistrano's layout) and of
# `cluster rollback` / `cluster releases`.
#
#     sh -s -- ACTION APP_DIR [ARG...] < releases.sh
#
# Layout under APP_DIR: releases/ID/ (one code tree per deploy), current -> releases/ID (a
# relative symlink, switched by renaming a temporary symlink over it: readers see the old
# target or the new, never none), and the node-owned state at APP_DIR itself (.venv, models,
# logs, .skeleton-deploy, the daemon's pid and lock files), linked into each release.
#
# A release ID is exactly YYYYMMDDTHHMMSSmmmZ-XXXXXXXX (UTC time with milliseconds, then 8 hex
# of the tree digest). Every name read from the node (`releases/*` entries, current's target)
# is checked against that pattern before it is used; an entry that does not match, or that is
# not a real directory (a symlink), is never followed, never listed and never deleted.
#
# Actions (output: key=value lines; exit 0 done, 1 failed (error=... says why), 2 bad args):
#   prepare APP_DIR ID          make releases/ID (must not exist); prints previous=ID (the
#                               release current points to, if any)
#   link APP_DIR ID NAME...     in releases/ID, NAME -> APP_DIR/NAME (absolute). NAME? (a
#                               trailing ?): only when APP_DIR/NAME exists and the release has
#                               no NAME of its own
#   switch APP_DIR ID KEEP PROTECT [LINE...]
#                               write LINEs to releases/ID/.skeleton-release (the release's
#                               digest), point current at releases/ID, then remove all but the
#                               KEEP newest releases, never ID nor PROTECT (the rollback
#                               target; "-" for none); prints switched=ID, pruned=ID lines
#   abort APP_DIR ID            remove releases/ID (a deploy that never switched)
#   list APP_DIR                current=ID, then release=ID version=V deployed_at=T per release
#   rollback APP_DIR [ID]       point current at ID (default: the newest release older than
#                               current) and make its digest the node's digest; prints from=ID
#                               to=ID; an unknown ID: error=unknown release ID, releases=...
# POSIX sh (dash) plus GNU `mv -T`; every expansion is quoted.

# `A && B || fail`: fail when either check fails, which is what is meant here.
# shellcheck disable=SC2015
set -u

ID_GLOB='[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]T[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]Z-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]'

usage() {
    printf 'error=%s\n' "$1"
    exit 2
}

fail() {
    printf 'error=%s\n' "$1"
    exit 1
}

# valid_id NAME: NAME is a release ID (the whole name matches; a newline never does).
valid_id() {
    # shellcheck disable=SC2254 # the pattern is the point
    case $1 in
        $ID_GLOB) return 0 ;;
        *) return 1 ;;
    esac
}

# is_release NAME: a valid ID naming a real directory under releases/ (not a symlink).
is_release() {
    valid_id "$1" && [ -d "$rel_root/$1" ] && [ ! -L "$rel_root/$1" ]
}

# current_id: print the release current points to, when current is a symlink to
# releases/<valid ID> that exists; false otherwise.
current_id() {
    [ -L "$app_dir/current" ] || return 1
    _t=$(readlink -- "$app_dir/current") || return 1
    _t=${_t#releases/}
    is_release "$_t" || return 1
    printf '%s\n' "$_t"
}

# releases: the valid releases, oldest first, one per line (IDs sort by time).
releases() {
    [ -d "$rel_root" ] && [ ! -L "$rel_root" ] || return 0
    for _p in "$rel_root"/*; do
        _n=${_p##*/}
        is_release "$_n" && printf '%s\n' "$_n"
    done | LC_ALL=C sort
}

# point_current ID: current -> releases/ID, atomically (rename of a temporary symlink).
point_current() {
    _tmp=$app_dir/.current.tmp.$$
    rm -f -- "$_tmp"
    ln -s -- "releases/$1" "$_tmp" || return 1
    # -T: never move the link INTO current when current is a directory.
    mv -T -f -- "$_tmp" "$app_dir/current" || { rm -f -- "$_tmp"; return 1; }
}

# first_line FILE: the first line of a regular file (not a symlink), at most 200 bytes.
first_line() {
    [ -f "$1" ] && [ ! -L "$1" ] || return 0
    head -c 200 -- "$1" | head -n 1
}

[ "$#" -ge 2 ] || usage "expected ACTION APP_DIR [ARG...], got $# arguments"
action=$1
app_dir=$2
shift 2
case $app_dir in
    /*) ;;
    *) usage "APP_DIR must be an absolute path, got \"$app_dir\"" ;;
esac
rel_root=$app_dir/releases

case $action in
    prepare)
        [ "$#" -eq 1 ] && valid_id "$1" || usage "prepare: expected a release ID"
        id=$1
        if [ -L "$rel_root" ] || { [ -e "$rel_root" ] && [ ! -d "$rel_root" ]; }; then
            fail "$rel_root is not a directory (a symlink or a file): refusing to deploy into it"
        fi
        if [ -e "$app_dir/current" ] && [ ! -L "$app_dir/current" ]; then
            fail "$app_dir/current exists and is not a symlink: move it away first"
        fi
        mkdir -p -- "$rel_root" || fail "cannot create $rel_root"
        [ ! -e "$rel_root/$id" ] && [ ! -L "$rel_root/$id" ] || fail "release $id already exists"
        mkdir -- "$rel_root/$id" || fail "cannot create $rel_root/$id"
        previous=$(current_id) || previous=
        printf 'previous=%s\n' "$previous"
        ;;
    link)
        [ "$#" -ge 1 ] && valid_id "$1" || usage "link: expected a release ID"
        id=$1
        shift
        is_release "$id" || fail "no release $id"
        for name in "$@"; do
            optional=
            case $name in
                *'?') optional=1; name=${name%'?'} ;;
            esac
            case /$name/ in
                *//* | */../* | */./*) usage "link: bad shared path \"$name\"" ;;
            esac
            target=$rel_root/$id/$name
            if [ -n "$optional" ]; then
                [ -e "$app_dir/$name" ] || continue
                [ ! -e "$target" ] && [ ! -L "$target" ] || continue
            fi
            mkdir -p -- "$(dirname -- "$target")" || fail "cannot create the parent of $target"
            rm -f -- "$target" 2>/dev/null
            ln -s -- "$app_dir/$name" "$target" || fail "cannot link $target"
        done
        printf 'ok\n'
        ;;
    switch)
        [ "$#" -ge 3 ] && valid_id "$1" || usage "switch: expected ID KEEP PROTECT [LINE...]"
        id=$1 keep=$2 protect=$3
        shift 3
        case $keep in
            '' | *[!0-9]* | 0) usage "switch: KEEP must be a positive number, got \"$keep\"" ;;
        esac
        is_release "$id" || fail "no release $id"
        : >"$rel_root/$id/.skeleton-release.tmp" || fail "cannot write the release's digest"
        for line in "$@"; do
            printf '%s\n' "$line" >>"$rel_root/$id/.skeleton-release.tmp" ||
                fail "cannot write the release's digest"
        done
        mv -f -- "$rel_root/$id/.skeleton-release.tmp" "$rel_root/$id/.skeleton-release" ||
            fail "cannot write the release's digest"
        point_current "$id" || fail "cannot switch $app_dir/current to releases/$id"
        printf 'switched=%s\n' "$id"
        # Pruning: after a successful switch only; a failure here fails nothing.
        total=$(releases | wc -l)
        excess=$((total - keep))
        for old in $(releases); do
            [ "$excess" -gt 0 ] || break
            [ "$old" = "$id" ] && continue
            [ "$old" = "$protect" ] && continue
            is_release "$old" || continue
            rm -rf -- "${rel_root:?}/$old" && printf 'pruned=%s\n' "$old"
            excess=$((excess - 1))
        done
        ;;
    abort)
        [ "$#" -eq 1 ] && valid_id "$1" || usage "abort: expected a release ID"
        cur=$(current_id) || cur=
        [ "$1" != "$cur" ] || fail "release $1 is current: not removed"
        if is_release "$1"; then
            rm -rf -- "${rel_root:?}/$1" || fail "cannot remove $rel_root/$1"
        fi
        printf 'ok\n'
        ;;
    list)
        [ "$#" -eq 0 ] || usage "list: no arguments expected"
        cur=$(current_id) || cur=
        printf 'current=%s\n' "$cur"
        for r in $(releases); do
            digest=$(first_line "$rel_root/$r/.skeleton-release")
            when=$(grep -m 1 '^deployed_at=' -- "$rel_root/$r/.skeleton-release" 2>/dev/null |
                head -c 100)
            [ -L "$rel_root/$r/.skeleton-release" ] && when=
            printf 'release=%s version=%s deployed_at=%s\n' "$r" "${digest%% *}" \
                "${when#deployed_at=}"
        done
        ;;
    rollback)
        [ "$#" -le 1 ] || usage "rollback: expected at most one release ID"
        cur=$(current_id) || cur=
        all=$(releases | tr '\n' ' ')
        all=${all% }
        if [ "$#" -eq 1 ]; then
            if ! valid_id "$1" || ! is_release "$1"; then
                printf 'releases=%s\n' "$all"
                fail "unknown release $1"
            fi
            to=$1
        else
            [ -n "$cur" ] || { printf 'releases=%s\n' "$all"; fail "current points to no release"; }
            to=
            for r in $(releases); do
                [ "$r" = "$cur" ] && break
                to=$r
            done
            [ -n "$to" ] || { printf 'releases=%s\n' "$all"; fail "no release older than $cur"; }
        fi
        point_current "$to" || fail "cannot switch $app_dir/current to releases/$to"
        # The node's digest now describes the release that is current: a deploy of the
        # rolled-back tree is a no-op, a deploy of another tree is not.
        state=$app_dir/.skeleton-deploy
        if [ -f "$rel_root/$to/.skeleton-release" ] && [ ! -L "$rel_root/$to/.skeleton-release" ] &&
            [ -d "$state" ] && [ ! -L "$state" ] &&
            cp -- "$rel_root/$to/.skeleton-release" "$state/digest.rollback.$$"; then
            mv -f -- "$state/digest.rollback.$$" "$state/digest"
        else
            rm -f -- "$state/digest"
        fi
        printf 'from=%s\nto=%s\n' "$cur" "$to"
        ;;
    *)
        usage "unknown action \"$action\" (prepare, link, switch, abort, list, rollback)"
        ;;
esac
exit 0
