#!/usr/bin/env python3
"""An HTTP server for the bench that answers single-range requests
(`bytes=a-b`, `bytes=a-`, `bytes=-n`) with 206, as S3, GCS and common web
servers do (python's http.server ignores Range), sends an ETag, and counts
the body bytes it sends. GET /_bytes returns the count since the last
GET /_reset.

Usage: range_server.py DIR PORT
"""
import http.server
import os
import re
import sys
import threading

SENT = {"bytes": 0, "requests": 0}
LOCK = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without this, each
    # response waits for a delayed ACK.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def counters(self):
        if self.path == "/_reset":
            with LOCK:
                SENT.update(bytes=0, requests=0)
        with LOCK:
            body = f"{SENT['bytes']} {SENT['requests']}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self):
        self.answer(head=True)

    def do_GET(self):
        if self.path in ("/_bytes", "/_reset"):
            return self.counters()
        self.answer(head=False)

    def answer(self, head):
        path = os.path.join(self.server.root, self.path.lstrip("/").split("?")[0])
        try:
            st = os.stat(path)
            f = open(path, "rb")
        except OSError:
            self.send_error(404)
            return
        with f:
            size = st.st_size
            etag = f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{size:x}"'
            start, end, status = 0, size, 200
            want = self.headers.get("Range")
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", want or "")
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start = int(m.group(1))
                    end = min(size, int(m.group(2)) + 1) if m.group(2) else size
                else:
                    start = max(0, size - int(m.group(2)))
                if start >= end:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            if_match = self.headers.get("If-Match")
            if if_match and if_match != etag:
                self.send_response(412)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(status)
            self.send_header("Content-Length", str(end - start))
            self.send_header("ETag", etag)
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
            self.end_headers()
            if head:
                return
            f.seek(start)
            left = end - start
            while left:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)
            with LOCK:
                SENT["bytes"] += end - start - left
                SENT["requests"] += 1


def main():
    root, port = sys.argv[1], int(sys.argv[2])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.root = root
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
