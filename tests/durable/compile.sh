#!/bin/sh
# Recompiles the programs of this directory: tests/compile.sh with this directory.
# Usage: tests/durable/compile.sh /path/to/concertoc
exec "$(dirname "$0")/../compile.sh" "$(dirname "$0")" "$@"
