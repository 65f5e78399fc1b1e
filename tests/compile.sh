#!/bin/sh
# Recompiles the test programs of one directory with concertoc, each in its own scratch
# directory next to a copy of that directory's Concerto.toml (a minimal one when the
# directory has none; the compiler treats a project directory as one program).
# Usage: tests/compile.sh DIR /path/to/concertoc [SUFFIX]
# A program that does not compile is reported and skipped; the exit status is then 1.
#   SUFFIX goes before `.conc-ir`: `.head` for the output of concertoc 7ad10db, none for
#   1a8ede9 (tests/cases/README.md).
set -eu
dir=$(cd "${1:?directory of .conc files}" && pwd)
C=${2:?path to concertoc}
suffix=${3:-}
failed=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for src in "$dir"/*.conc; do
    name=$(basename "$src" .conc)
    mkdir -p "$tmp/$name"
    if [ -f "$dir/Concerto.toml" ]; then
        sed "s/^entry = .*/entry = \"__none__.conc\"/" "$dir/Concerto.toml" > "$tmp/$name/Concerto.toml"
    else
        printf '[project]\nname = "cases"\nversion = "0.1.0"\nentry = "__none__.conc"\n' > "$tmp/$name/Concerto.toml"
    fi
    cp "$src" "$tmp/$name/"
    if ! "$C" -q "$tmp/$name/$name.conc" -o "$dir/$name$suffix.conc-ir"; then
        echo "compile.sh: $name.conc does not compile with $C" >&2
        failed=1
    fi
done
exit "$failed"
