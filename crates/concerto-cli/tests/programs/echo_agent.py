#!/usr/bin/env python3
"""Answers each prompt line with {"type": "result", "text": "heard: <prompt>"}."""
import json
import sys

for line in sys.stdin:
    text = line.rstrip("\n")
    try:
        msg = json.loads(text)
        if isinstance(msg, dict) and "prompt" in msg:
            text = str(msg["prompt"])
    except ValueError:
        pass
    sys.stdout.write(json.dumps({"type": "result", "text": "heard: " + text}) + "\n")
    sys.stdout.flush()
