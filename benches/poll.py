#!/usr/bin/env python3
"""A client of the time app's Service, for the benchmarks: `GET /` to 127.0.0.1:PORT.

One request at a time, a new connection for each (so every request follows the node-port
proxy's current endpoints), at most one per --interval, each with a 2 s timeout. It stops at
--max-requests, at --max-time, when --stop-file exists, or on SIGTERM/SIGINT, and writes one
line per request, flushed at once:

    <seconds since start, when the answer or error came> <status|error> <X-App-Version|-> <X-Pod-Name|->

Traffic goes only to 127.0.0.1. Python 3 standard library only.

Usage: poll.py --port PORT [--interval 0.02] [--max-requests 20000] [--max-time 300]
               [--stop-file FILE] [--out FILE]
"""

import argparse
import http.client
import os
import signal
import sys
import time

HOST = "127.0.0.1"
TIMEOUT = 2.0


def field(value):
    """A header value as one word of the output line ('-' when missing or empty)."""
    words = (value or "").split()
    return words[0] if words else "-"


def ask(port):
    """One `GET /` on a new connection: (status or 'error', version, pod)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        return str(resp.status), field(resp.getheader("X-App-Version")), field(resp.getheader("X-Pod-Name"))
    except (OSError, http.client.HTTPException):
        return "error", "-", "-"
    finally:
        conn.close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True, help="the Service's node port on 127.0.0.1")
    p.add_argument("--interval", type=float, default=0.02, help="at most one request per this many seconds (0.02)")
    p.add_argument("--max-requests", type=int, default=20000, help="stop after this many requests (20000)")
    p.add_argument("--max-time", type=float, default=300.0, help="stop after this many seconds (300)")
    p.add_argument("--stop-file", help="stop once this file exists")
    p.add_argument("--out", help="write the lines here (default: stdout)")
    args = p.parse_args()
    if args.max_requests <= 0 or args.max_time <= 0 or args.interval < 0:
        p.error("--max-requests and --max-time must be positive, --interval not negative")

    stopping = []

    def stop(signum, _frame):
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    out = open(args.out, "w", buffering=1) if args.out else sys.stdout
    start = time.monotonic()
    next_at = start
    sent = 0
    while sent < args.max_requests and not stopping:
        now = time.monotonic()
        if now - start >= args.max_time:
            break
        if args.stop_file and os.path.exists(args.stop_file):
            break
        if now < next_at:
            time.sleep(next_at - now)
        # The next request starts an interval after this one started, or when this one ends if
        # it took longer: no catching up.
        next_at = time.monotonic() + args.interval
        status, version, pod = ask(args.port)
        sent += 1
        out.write(f"{time.monotonic() - start:.4f} {status} {version} {pod}\n")
        out.flush()
    if out is not sys.stdout:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
