#!/usr/bin/env python3
"""Runs a command and prints JSON with its wall time, peak RSS (of it and its children) and exit status."""
import json
import os
import sys
import time

start = time.monotonic()
pid = os.fork()
if pid == 0:
    if os.environ.get("MEASURE_STDOUT_NULL"):
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, 1)
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(json.dumps({
    "seconds": time.monotonic() - start,
    "maxRssKiB": usage.ru_maxrss,
    "status": os.waitstatus_to_exitcode(status),
}))
