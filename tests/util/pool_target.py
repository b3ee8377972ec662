"""A pool target for tests/pools.rs: a real HTTP/1.1 server process (keep-alive) that
answers every request with {"target": NAME} and counts what it served.

usage: pool_target.py NAME PORT [DELAY_MS] [SICK_FILE]
- DELAY_MS: every client request waits this long before its answer (a hung target).
- SICK_FILE: while this file exists, GET /health answers 503.
- GET /health is the health probe (not counted); GET /_stats (not counted) answers
  {"served": n, "inFlight": n, "healthUserAgent": ua of the last probe}.
"""
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = sys.argv[1]
PORT = int(sys.argv[2])
DELAY = int(sys.argv[3]) / 1000.0 if len(sys.argv) > 3 else 0.0
SICK = sys.argv[4] if len(sys.argv) > 4 else None
lock = threading.Lock()
stats = {"served": 0, "inFlight": 0, "healthUserAgent": None}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def handle_any(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        path = self.path.split("?")[0]
        if path == "/health":
            with lock:
                stats["healthUserAgent"] = self.headers.get("User-Agent")
            sick = SICK is not None and os.path.exists(SICK)
            return self.answer(503 if sick else 200, {"target": NAME, "health": not sick})
        if path == "/_stats":
            with lock:
                return self.answer(200, dict(stats))
        with lock:
            stats["inFlight"] += 1
        try:
            if DELAY:
                time.sleep(DELAY)
            with lock:
                stats["served"] += 1
            self.answer(200, {"target": NAME, "method": self.command})
        finally:
            with lock:
                stats["inFlight"] -= 1

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = handle_any


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


Server(("127.0.0.1", PORT), Handler).serve_forever()
