#!/bin/sh
# Compiles the programs of this folder with concertoc 7ad10db (listen and agent params
# exist only there): `tests/stream/compile.sh /path/to/concertoc-7ad10db`.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/../compile.sh" "$here" "${1:?path to concertoc 7ad10db}" .head
