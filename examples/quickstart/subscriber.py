"""A tiny subscriber: prints every event it receives and answers 200.

    python examples/quickstart/subscriber.py [--port 9000] [--fail-first N]

Standard library only. It understands the three delivery formats: CloudEvents
binary mode (ce-* headers), structured mode (application/cloudevents+json) and
data-only. With --fail-first N it answers 503 to its first N requests, to watch
Tidings retry.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Requests are handled on threads: one line at a time, or two events delivered at
# once can interleave into one line ("...: 0subscriber: received ...").
_printing = threading.Lock()


def say(line: str) -> None:
    with _printing:
        print(line, flush=True)


class Subscriber(BaseHTTPRequestHandler):
    fail_first = 0
    seen = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Subscriber.seen += 1
        if Subscriber.seen <= Subscriber.fail_first:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            say(f"subscriber: answered 503 to request {Subscriber.seen}")
            return
        content_type = self.headers.get("Content-Type", "")
        if content_type.startswith("application/cloudevents+json"):
            event = json.loads(body)
            attrs = {k: v for k, v in event.items() if k not in ("data", "data_base64")}
            data = event.get("data")
        else:
            headers = self.headers.items()
            attrs = {k[3:].lower(): v for k, v in headers if k.lower().startswith("ce-")}
            try:
                data = json.loads(body) if body else None
            except ValueError:
                data = body.decode(errors="replace")
        say(
            f"subscriber: received {attrs.get('type', '?')} id={attrs.get('id', '?')} "
            f"on {self.path}: {json.dumps(data)}"
        )
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per event above is enough


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--fail-first", type=int, default=0, metavar="N")
    args = parser.parse_args()
    Subscriber.fail_first = args.fail_first
    server = ThreadingHTTPServer((args.host, args.port), Subscriber)
    print(f"subscriber: listening on http://{args.host}:{args.port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    sys.exit(0)


if __name__ == "__main__":
    main()
