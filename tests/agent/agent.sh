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
#
# With converse=N the agent then talks: it prints {"type":"idle"} and polls
# the inbox for message-*.json files (name order, each once), printing
# {"type":"received","id":ID} before running the directives of each and
# {"type":"idle"} after; close.json ends it with 0 (unless close=ignore),
# and so does N seconds (at least) without a new message (0 = no limit).
set -f
input=${MOORAGE_INPUT:-/moorage/input.json}
inbox=${MOORAGE_INBOX:-/moorage/in}
converse=
ignore_close=

texts() {
    awk '{
        s = $0
        while (match(s, /"text":"([^"\\]|\\.)*"/)) {
            print substr(s, RSTART + 8, RLENGTH - 9)
            s = substr(s, RSTART + RLENGTH)
        }
    }' "$1"
}

message_id() {
    awk 'match($0, /"id":[0-9]+/) {
        print substr($0, RSTART + 5, RLENGTH - 5)
        exit
    }' "$1"
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
    converse) is_number "$value" && converse=$value ;;
    close) [ "$value" = ignore ] && ignore_close=1 ;;
    esac
    return 0
}

# Run the directives of every text in file $1, in order.
run_texts() {
    IFS='
'
    # shellcheck disable=SC2046  # one text per line is the intent
    set -- $(texts "$1")
    IFS=' '
    for text in "$@"; do
        IFS=';'
        # shellcheck disable=SC2086  # word splitting on ';' is the grammar
        set -- $text
        IFS=' '
        for directive in "$@"; do
            run "$directive"
        done
    done
}

take() {
    id=$(message_id "$1")
    is_number "$id" || return 0
    printf '{"type":"received","id":%s}\n' "$id"
    run_texts "$1"
    printf '{"type":"idle"}\n'
}

talk() {
    printf '{"type":"idle"}\n'
    seen=' '
    quiet=0
    while :; do
        # close.json is looked for first, so every message delivered before
        # it is seen by the scan below and taken before the agent leaves.
        closing=
        [ -f "$inbox/close.json" ] && closing=1
        set +f
        set -- "$inbox"/message-*.json
        set -f
        for file in "$@"; do
            name=${file##*/}
            [ -f "$file" ] || continue
            case $seen in *" $name "*) continue ;; esac
            seen="$seen$name "
            quiet=0
            take "$file"
        done
        if [ -n "$closing" ] && [ -z "$ignore_close" ]; then
            exit 0
        fi
        if [ "$converse" -gt 0 ] && [ "$quiet" -ge $((converse * 20)) ]; then
            exit 0
        fi
        sleep 0.05
        quiet=$((quiet + 1))
    done
}

run_texts "$input"
[ -n "$converse" ] && talk
exit 0
