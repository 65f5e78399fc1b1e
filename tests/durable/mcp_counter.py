"""A stdio MCP server for the kill-point harness: one tool, add(a, b), and every call it
answers appended (and fsynced) to the log file named by its first argument before the
answer is written, so the harness can count the calls each run made."""

import json
import os
import sys

TOOLS = [{
    "name": "add",
    "description": "Adds two integers.",
    "inputSchema": {"type": "object",
                    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                    "required": ["a", "b"]},
}]


def log_call(path, arguments):
    with open(path, "a", encoding="utf-8") as log:
        log.write(json.dumps(arguments, sort_keys=True) + "\n")
        log.flush()
        os.fsync(log.fileno())


def respond(message, log_path):
    method = message.get("method")
    params = message.get("params") or {}
    if method == "initialize":
        return {"protocolVersion": params.get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {"listChanged": False}},
                "serverInfo": {"name": "durable-counter", "version": "1.0.0"}}
    if method == "ping":
        return {}
    if method == "tools/list":
        return {"tools": TOOLS}
    if method == "tools/call" and params.get("name") == "add":
        arguments = params.get("arguments") or {}
        log_call(log_path, arguments)
        total = int(arguments.get("a", 0)) + int(arguments.get("b", 0))
        return {"content": [{"type": "text", "text": str(total)}]}
    return None


def main():
    log_path = sys.argv[1]
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        message = json.loads(line)
        if message.get("id") is None:
            continue
        result = respond(message, log_path)
        if result is None:
            reply = {"jsonrpc": "2.0", "id": message["id"],
                     "error": {"code": -32601, "message": "unknown method"}}
        else:
            reply = {"jsonrpc": "2.0", "id": message["id"], "result": result}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
