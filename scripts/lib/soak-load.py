"""Soak load for scripts/soak.sh (and the rolling restart of scripts/bench-cluster.sh): a
slow-capable upstream and mixed client traffic.

  soak-load.py upstream PORT              serve: /slow/<ms> sleeps first; everything answers 200 JSON
  soak-load.py clients URL SECS KEYS_JSON drive the gateway for SECS seconds, then print a JSON tally

Mixed traffic, each kind on its own keep-alive connections: valid fast requests, valid
requests to a slow upstream (400 ms), a key over its rate limit (429), and well-formed keys
with wrong secrets from rotating client IPs (401, then 429 per IP) via X-Forwarded-For;
and valid fast requests on a new connection each. A kind runs when KEYS_JSON names its
key. Every request is finished before a client stops, so the tally counts each answer.
Standard library only.
"""
import http.client
import http.server
import json
import random
import socketserver
import sys
import threading
import time
from urllib.parse import urlparse


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        parts = self.path.split("?")[0].split("/")
        if "slow" in parts:
            i = parts.index("slow")
            if i + 1 < len(parts) and parts[i + 1].isdigit():
                time.sleep(int(parts[i + 1]) / 1000)
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def client(url, until, kind, key, tally, lock):
    u = urlparse(url)
    conn = None
    n = 0
    while time.time() < until:
        n += 1
        headers = {"x-api-key": key}
        path = "/api/x"
        pause = 0.02
        if kind == "slow":
            path = "/api/slow/400"
        elif kind == "invalid":
            public_id = key[3:15]
            headers["x-api-key"] = "gw_%s_%032d" % (public_id, random.randrange(10**12))
            headers["x-forwarded-for"] = "10.%d.%d.%d" % (
                random.randrange(256), random.randrange(256), random.randrange(1, 255))
            pause = 0.05
        elif kind == "limited":
            pause = 0.05
        try:
            if conn is None:
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
            conn.request("GET", path, headers=headers)
            r = conn.getresponse()
            r.read()
            status = r.status
            if kind == "fresh" or r.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException):
            status = 0
            if conn is not None:
                conn.close()
            conn = None
        with lock:
            key_ = "%s %d" % (kind, status)
            tally[key_] = tally.get(key_, 0) + 1
        time.sleep(pause)


def main():
    if sys.argv[1] == "upstream":
        ThreadingServer(("127.0.0.1", int(sys.argv[2])), Upstream).serve_forever()
        return
    url, secs, keys = sys.argv[2], float(sys.argv[3]), json.loads(sys.argv[4])
    until = time.time() + secs
    tally, lock = {}, threading.Lock()
    # (kind, the key it sends, clients)
    kinds = [("valid", "valid", 4), ("slow", "slow", 4), ("limited", "limited", 2),
             ("invalid", "victim", 2), ("fresh", "fresh", 2)]
    plan = [(kind, keys[k]) for kind, k, n in kinds if k in keys for _ in range(n)]
    threads = [threading.Thread(target=client, args=(url, until, k, key, tally, lock))
               for k, key in plan]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(tally, sort_keys=True))


if __name__ == "__main__":
    main()
