#!/bin/sh
# Recompiles the test programs of one directory with concertoc, each in its own scratch
# directory next to a copy of that directory's Concerto.toml (the compiler treats a project
# directory as one program).
# Usage: tests/compile.sh DIR /path/to/concertoc
set -eu
dir=$(cd "${1:?directory of .conc files}" && pwd)
C=${2:?path to concertoc}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for src in "$dir"/*.conc; do
    name=$(basename "$src" .conc)
    mkdir -p "$tmp/$name"
    sed "s/^entry = .*/entry = \"__none__.conc\"/" "$dir/Concerto.toml" > "$tmp/$name/Concerto.toml"
    cp "$src" "$tmp/$name/"
    "$C" -q "$tmp/$name/$name.conc" -o "$dir/$name.conc-ir"
done
