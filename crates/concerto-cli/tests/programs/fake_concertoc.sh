#!/bin/sh
# A stand-in for concertoc in tests (CI cannot build the real one): `fake_concertoc.sh
# SRC.conc -o OUT` copies the checked-in SRC.head.conc-ir (compiled by concertoc 7ad10db)
# to OUT, and appends its working directory and arguments to $FAKE_CONCERTOC_LOG when set.
set -eu
src=$1
[ "$2" = "-o" ] || { echo "usage: $0 SRC.conc -o OUT" >&2; exit 2; }
out=$3
if [ -n "${FAKE_CONCERTOC_LOG:-}" ]; then
    printf '%s %s %s\n' "$(pwd)" "$src" "$out" >> "$FAKE_CONCERTOC_LOG"
fi
ir="${src%.conc}.head.conc-ir"
[ -f "$ir" ] || { echo "error: no such program: $src" >&2; exit 1; }
cp "$ir" "$out"
