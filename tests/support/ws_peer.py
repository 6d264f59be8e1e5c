#!/usr/bin/env python3
"""WebSocket peers for the proxy tests, built on the `websockets` library.

server: echo server on 127.0.0.1 (free port printed as "PORT <n>"). A text
        message "close-me" makes it close the connection with code 4002.
client URL: connects, checks echoes, prints "OPEN" and waits for a line on
        stdin, then checks a server-initiated close (4002) on a second
        connection and a client-initiated close (4001) on the first.
Exit status 0 means every check passed."""
import os
import sys

from websockets.sync.client import connect
from websockets.sync.server import serve
from websockets.exceptions import ConnectionClosed


def server():
    def handler(ws):
        try:
            for msg in ws:
                if msg == "close-me":
                    ws.close(4002, "server says bye")
                    return
                ws.send(msg)
        except ConnectionClosed:
            pass
        handler.last_close = (ws.close_code, ws.close_reason)
        print(f"CLOSED {ws.close_code}", flush=True)

    with serve(handler, "127.0.0.1", 0) as srv:
        print(f"PORT {srv.socket.getsockname()[1]}", flush=True)
        srv.serve_forever()


def client(url):
    with connect(url, open_timeout=5, close_timeout=5) as ws:
        for payload in ["hello", os.urandom(70000), b"\x00\x01binary"]:  # random: deflate cannot shrink it
            ws.send(payload)
            got = ws.recv(timeout=5)
            assert got == payload, f"echo mismatch for {payload[:10]!r}"
        ws.ping().wait(timeout=5)
        print("OPEN", flush=True)
        sys.stdin.readline()
        # Server-initiated close on a second connection.
        with connect(url, open_timeout=5, close_timeout=5) as ws2:
            ws2.send("close-me")
            try:
                ws2.recv(timeout=5)
                raise AssertionError("expected a close")
            except ConnectionClosed:
                pass
            assert ws2.close_code == 4002, f"server close code {ws2.close_code}"
        ws.close(4001, "client says bye")
        assert ws.close_code == 4001, f"client close echoed as {ws.close_code}"
    print("DONE", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server()
    else:
        client(sys.argv[2])
