#!/bin/sh
# Recompiles the tool test programs with concertoc (each in its own directory next to a copy
# of Concerto.toml, since the compiler treats a project directory as one program).
# Usage: tests/tools/compile.sh /path/to/concertoc
set -eu
C=${1:?path to concertoc}
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for src in "$here"/*.conc; do
    name=$(basename "$src" .conc)
    mkdir -p "$tmp/$name"
    sed "s/^entry = .*/entry = \"__none__.conc\"/" "$here/Concerto.toml" > "$tmp/$name/Concerto.toml"
    cp "$src" "$tmp/$name/"
    "$C" -q "$tmp/$name/$name.conc" -o "$here/$name.conc-ir"
done
