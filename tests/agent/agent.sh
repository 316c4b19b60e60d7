#!/bin/sh
# moorage test agent (busybox sh).  Behaviour is driven by the "text" of every
# message in the input document, in order.  Directives are separated by ';',
# spaces around them are ignored, anything that is not a known directive is
# ignored.  See docs/runtimes.md ("The test agent") for the grammar; the
# Python twin tests/agent/agent.py behaves identically, byte for byte.
#
# The input is the compact one-line JSON moorage writes (ASCII only, every
# non-ASCII character \u-escaped).  Text values are taken in their escaped
# form and printed back in it, so nothing is ever decoded or evaluated here.
set -f
input=${MOORAGE_INPUT:-/moorage/input.json}
inbox=${MOORAGE_INBOX:-/moorage/in}

texts() {
    awk '{
        s = $0
        while (match(s, /"text":"([^"\\]|\\.)*"/)) {
            print substr(s, RSTART + 8, RLENGTH - 9)
            s = substr(s, RSTART + RLENGTH)
        }
    }' "$input"
}

trim() {
    v=$1
    while [ "${v# }" != "$v" ]; do v=${v# }; done
    while [ "${v% }" != "$v" ]; do v=${v% }; done
    printf '%s' "$v"
}

is_number() {
    case $1 in '' | *[!0-9]*) return 1 ;; esac
    return 0
}

run() {
    d=$(trim "$1")
    case $d in *=*) ;; *) return 0 ;; esac
    key=${d%%=*}
    value=${d#*=}
    case $key in
    reply) printf '{"type":"reply","text":"%s"}\n' "$value" ;;
    log) printf '%s\n' "$value" ;;
    stderr) printf '%s\n' "$value" >&2 ;;
    partial) printf '%s' "$value" ;;
    lines)
        is_number "$value" || return 0
        i=1
        while [ "$i" -le "$value" ]; do
            printf '{"type":"reply","text":"line %s"}\n' "$i"
            i=$((i + 1))
        done
        ;;
    sleep) sleep "$value" 2>/dev/null ;;
    exit) is_number "$value" && exit "$value" ;;
    await)
        case $value in '' | .* | */*) return 0 ;; esac
        while [ ! -f "$inbox/$value" ]; do sleep 0.05; done
        printf '{"type":"inbox","name":"%s","document":%s}\n' "$value" "$(cat "$inbox/$value")"
        ;;
    esac
    return 0
}

texts | {
    while IFS= read -r text; do
        IFS=';'
        # shellcheck disable=SC2086  # word splitting on ';' is the grammar
        set -- $text
        IFS=' '
        for directive in "$@"; do
            run "$directive"
        done
    done
    exit 0
}
