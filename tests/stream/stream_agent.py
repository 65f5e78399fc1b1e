#!/usr/bin/env python3
"""A stdio external agent for the runtime's tests (Python 3, standard library only).

`stream_agent.py MODE TAG`: behaves as MODE says (below). TAG only marks the command line, so
a test can find the process and check that it is gone.

Modes:
  init        expects {"type":"init","params":...} first, answers init_ack; then answers each
              prompt with {"type":"result","text":...} naming the params and the call number
  init_error  answers the init with {"type":"error","message":"unknown berth 99"}
  init_silent reads the init and never answers
  converse    per prompt: progress, a question (reads one reply), an approval (reads one
              reply), a message type no handler takes, then a result listing what it read
  error       per prompt: progress, then {"type":"error","message":"winch jammed"}
  silent      reads the prompt and never answers
  crash       per prompt: progress, then "rope snapped" on stderr and exit status 3 (no
              terminal message)
  garbage     per prompt: a line that is not JSON (bytes that are not UTF-8 among them)
  untyped     per prompt: a JSON object without a "type"
  echo        per line read: {"type":"result","text":"got: <the line>"}
  huge        per prompt: 33 MiB without a line break, then waits
"""
import json
import os
import sys
import time


def send(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def prompt_text(line):
    try:
        msg = json.loads(line)
    except ValueError:
        return line
    if isinstance(msg, dict):
        if msg.get("type") == "prompt":
            return str(msg.get("text", ""))
        if "prompt" in msg:
            return str(msg["prompt"])
    return line


def read():
    line = sys.stdin.readline()
    if not line:
        sys.exit(0)
    return line.rstrip("\n")


def main():
    mode = sys.argv[1]
    if mode.startswith("init"):
        first = json.loads(read())
        if first.get("type") != "init":
            send({"type": "result", "text": "expected init, got " + json.dumps(first)})
            return
        if mode == "init_error":
            send({"type": "error", "message": "unknown berth 99"})
            time.sleep(30)
            return
        if mode == "init_silent":
            time.sleep(30)
            return
        params = first.get("params")
        send({"type": "init_ack", "version": "1.0"})
        calls = 0
        while True:
            text = prompt_text(read())
            calls += 1
            if text.startswith("init?"):
                send({"type": "result", "text": "a second init was sent"})
                continue
            send({"type": "result", "text": "call %d %s %s" % (calls, json.dumps(params, sort_keys=True), text)})
    while True:
        raw = read()
        line_seen = [raw]
        text = prompt_text(raw)
        if mode == "converse":
            heard = []
            send({"type": "progress", "message": "lowering nets", "percent": 25})
            send({"type": "question", "question": "Which bay?", "options": ["north", "south"]})
            heard.append(read())
            send({"type": "approval", "description": "cut the line", "risk_level": "high"})
            heard.append(read())
            send({"type": "weather", "wind": 7})
            send({"type": "result", "text": "landed: " + text, "heard": heard})
        elif mode == "error":
            send({"type": "progress", "message": "hauling", "percent": 10})
            send({"type": "error", "message": "winch jammed"})
        elif mode == "silent":
            time.sleep(30)
        elif mode == "crash":
            send({"type": "progress", "message": "about to fail", "percent": 5})
            sys.stdout.flush()
            sys.stderr.write("rope snapped\n")
            sys.stderr.flush()
            os._exit(3)
        elif mode == "garbage":
            sys.stdout.buffer.write(b"\xff\xfe not json {{\n")
            sys.stdout.flush()
        elif mode == "untyped":
            send({"catch": 12})
        elif mode == "echo":
            send({"type": "result", "text": "got: " + line_seen[0]})
        elif mode == "huge":
            chunk = b"x" * (1024 * 1024)
            for _ in range(33):
                sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            time.sleep(30)
        else:
            send({"type": "error", "message": "unknown mode " + mode})


if __name__ == "__main__":
    main()
