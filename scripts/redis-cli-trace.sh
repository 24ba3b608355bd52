#!/bin/sh
# Request a trace and read it back with redis-cli only (docs/PROTOCOL.md §6). POSIX sh; needs
# redis-cli, sha256sum, head, tail, wc, awk.
#
#   REDIS="redis-cli -h HOST -p PORT" PREFIX=traces scripts/redis-cli-trace.sh JOB_ID REQUEST_JSON OUT
#
# REQUEST_JSON must name JOB_ID as its "job_id" (a shell has no sha256-of-canonical-JSON at hand;
# clients in other languages derive it, PROTOCOL.md §1). Follows the request's own answers on
# <prefix>:events (status entries only, no chunk bytes), then reads the answered attempt's chunks
# one entry at a time (XRANGE ... COUNT 1) from its start_id, checking type, attempt, seq, offset
# and last, and verifies size and sha256. Exit 0 with OUT written and verified; 1 otherwise.
set -eu

job=$1 request=$2 out=$3
REDIS=${REDIS:-redis-cli}
PREFIX=${PREFIX:-traces}
TIMEOUT=${TIMEOUT:-600}
stream="$PREFIX:job:{$job}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

r() { $REDIS --raw "$@"; }
fail() { echo "redis-cli-trace: $*" >&2; exit 1; }

case $request in *"\"job_id\":\"$job\""* | *"\"job_id\": \"$job\""*) ;; *) fail "the request must name \"job_id\":\"$job\"" ;; esac

# 1. where the answers start: the events stream's newest id (status entries of every job)
last=$(r XREVRANGE "$PREFIX:events" + - COUNT 1 | head -n 1)
[ -n "$last" ] || last=0-0
# 2. the request; the id XADD returns is our request id
rid=$(r XADD "$PREFIX:requests" '*' request "$request")
case $rid in *-*) ;; *) fail "XADD failed: $rid" ;; esac
echo "request $rid job $job"

# 3. our answers: entries of <prefix>:events whose request_id is ours, until a terminal state
started=$(date +%s)
picked=no
state=
while [ -z "$state" ]; do
    now=$(date +%s)
    [ $((now - started)) -lt "$TIMEOUT" ] || fail "no answer within $TIMEOUT s"
    r XREAD COUNT 50 BLOCK 5000 STREAMS "$PREFIX:events" "$last" > "$tmp/events"
    if ! grep -q . "$tmp/events"; then  # a timed-out XREAD prints an empty line
        if [ $picked = no ] && [ $((now - started)) -ge 5 ]; then
            echo "not picked up yet; workers of $PREFIX: $(r XINFO GROUPS "$PREFIX:requests" 2>&1 | tr '\n' ' ')" >&2
        fi
        continue
    fi
    # raw output: the stream name, then per entry its id and field/value lines (status values are
    # text). An id appears where a field name is expected; names never look like ids.
    : > "$tmp/answer"
    awk -v rid="$rid" -v out="$tmp/answer" '
        BEGIN { even = 1 }
        function done_entry() {
            if (f["request_id"] == rid) {
                print "state " f["state"] > "/dev/stderr"
                if (f["state"] ~ /^(succeeded|failed|cancelled|dead)$/ && !found) {
                    for (k in f) print k "\t" f[k] > out
                    found = 1
                    exit
                }
            }
            split("", f)
        }
        NR == 1 { next }
        even && /^[0-9]+-[0-9]+$/ { if (started) done_entry(); started = 1; id = $0; key = ""; next }
        { if (even) { key = $0; even = 0 } else { f[key] = $0; even = 1 } }
        END { if (started && !found) done_entry(); print id }
    ' "$tmp/events" 2> "$tmp/mine" > "$tmp/last"
    last=$(cat "$tmp/last")
    if [ -s "$tmp/mine" ]; then picked=yes; fi
    if [ -s "$tmp/answer" ]; then state=$(awk -F '\t' '$1 == "state" { print $2 }' "$tmp/answer"); fi
done

field() { awk -F '\t' -v k="$1" '$1 == k { print $2 }' "$tmp/answer"; }
[ "$state" = succeeded ] || fail "job $job $state: $(field error_code) $(field message) $(field detail)"
attempt=$(field attempt) size=$(field size) sha=$(field sha256) start=$(field start_id) chunks=$(field chunks)
[ -n "$size" ] && [ -n "$sha" ] || fail "the succeeded status carries no size or sha256: refusing it"
echo "succeeded attempt $attempt size $size sha256 $sha"
[ "${chunks:-0}" -gt 0 ] || fail "blob-only job: fetch $(field url) (curl) and check its sha256 yourself"
[ -n "$start" ] || fail "the status has no start_id (a v1 worker): read the chunks from 0"

# 4. the answered attempt's chunks, one entry per XRANGE, from start_id
: > "$out.part"
seq=0 offset=0 from=$start
while :; do
    r XRANGE "$stream" "$from" + COUNT 1 > "$tmp/entry"
    [ -s "$tmp/entry" ] || fail "the job stream ended before the last chunk (expired?)"
    id=$(head -n 1 "$tmp/entry")
    from="($id"
    # a chunk entry prints as: id, job_id, J, attempt, A, type, chunk, seq, S, offset, O, data,
    # <data bytes>, last, true|false (each followed by a newline; only the data may hold newlines)
    [ "$(sed -n 7p "$tmp/entry")" = chunk ] || continue
    [ "$(sed -n 5p "$tmp/entry")" = "$attempt" ] || continue
    [ "$(sed -n 12p "$tmp/entry")" = data ] || fail "unexpected chunk field order in $id"
    [ "$(sed -n 9p "$tmp/entry")" = "$seq" ] || fail "chunk $id has seq $(sed -n 9p "$tmp/entry"), expected $seq"
    [ "$(sed -n 11p "$tmp/entry")" = "$offset" ] || fail "chunk $id has offset $(sed -n 11p "$tmp/entry"), expected $offset"
    [ "$(tail -n 2 "$tmp/entry" | head -n 1)" = last ] || fail "unexpected chunk field order in $id"
    last_flag=$(tail -n 1 "$tmp/entry")
    total=$(wc -c < "$tmp/entry")
    head_len=$(head -n 12 "$tmp/entry" | wc -c)
    tail_len=$((5 + ${#last_flag} + 1))
    len=$((total - head_len - 1 - tail_len))
    [ "$len" -ge 0 ] || fail "cannot cut the data out of chunk $id"
    tail -c +$((head_len + 1)) "$tmp/entry" | head -c "$len" >> "$out.part"
    seq=$((seq + 1)) offset=$((offset + len))
    [ "$last_flag" = true ] && break
done

# 5. verify, then publish under the requested name
[ "$(wc -c < "$out.part")" -eq "$size" ] || fail "received $(wc -c < "$out.part") bytes, the job reported $size"
got=$(sha256sum "$out.part" | awk '{ print $1 }')
[ "$got" = "$sha" ] || fail "sha256 $got does not match the job's $sha"
mv "$out.part" "$out"
echo "$out verified"
