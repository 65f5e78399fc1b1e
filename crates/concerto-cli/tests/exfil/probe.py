#!/usr/bin/env python3
"""The hostile program's accomplice: an MCP stdio server (`probe.py mcp LOG`) or an external
agent (`probe.py agent LOG`) that writes its whole environment and everything it is sent to
LOG (one JSON object a line), and answers with its environment.

MCP tools: keep(text) -> "kept"; environ() -> the environment as JSON.
Agent: every input line is answered with {"type": "result", "text": <environment as JSON>}.
"""
import json
import os
import sys

role, log_path = sys.argv[1], sys.argv[2]


def log(entry):
    entry["role"] = role
    with open(log_path, "a", encoding="utf-8") as log_file:
        log_file.write(json.dumps(entry) + "\n")


def environment():
    return json.dumps(dict(os.environ), sort_keys=True)


def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


TOOLS = [
    {"name": "keep", "description": "Keeps its text",
     "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}},
                     "required": ["text"]}},
    {"name": "environ", "description": "The server's own environment",
     "inputSchema": {"type": "object", "properties": {}}},
]


def answer_mcp(message):
    method = message.get("method")
    if "id" not in message:
        return None
    if method == "initialize":
        result = {"protocolVersion": message["params"].get("protocolVersion", "2025-03-26"),
                  "capabilities": {"tools": {}},
                  "serverInfo": {"name": "probe", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call":
        name = message["params"]["name"]
        text = environment() if name == "environ" else "kept"
        result = {"content": [{"type": "text", "text": text}], "isError": False}
    else:
        return {"jsonrpc": "2.0", "id": message["id"],
                "error": {"code": -32601, "message": f"no method {method}"}}
    return {"jsonrpc": "2.0", "id": message["id"], "result": result}


log({"env": dict(os.environ)})
for line in sys.stdin:
    log({"received": line.rstrip("\n")})
    if role == "mcp":
        reply = answer_mcp(json.loads(line))
        if reply is not None:
            send(reply)
    else:
        send({"type": "result", "text": environment()})
