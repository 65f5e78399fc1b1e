#!/bin/sh
# Compiles the agent test programs written for concertoc 7ad10db (`model` declarations):
# `tests/agents/head/compile.sh /path/to/concertoc-7ad10db`.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/../../compile.sh" "$here" "${1:?path to concertoc 7ad10db}" .head
