#!/bin/sh
# Recompiles the program of this directory with concertoc 7ad10db: tests/compile.sh with
# this directory and the `.head` suffix.
# Usage: tests/queue/compile.sh /path/to/concertoc-7ad10db
exec "$(dirname "$0")/../compile.sh" "$(dirname "$0")" "$1" .head
