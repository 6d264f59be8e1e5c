#!/usr/bin/env python3
"""Idle WebSockets, both ends, for bench/ws_idle_memory.sh.

  ws_idle.py backend --port P
      answers every upgrade with 101 and holds the connection, silent.
  ws_idle.py clients --port P -n N [--hold S]
      opens N WebSocket upgrades through P (200 at a time), checks each
      101, prints "READY ok=<n> failed=<n>" once all are idle, then holds
      them for --hold seconds.
Loopback only."""
import argparse, asyncio, sys

ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # for the RFC 6455 sample key


async def backend(port):
    held = []

    async def serve(r, w):
        try:
            await r.readuntil(b"\r\n\r\n")
            w.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + ACCEPT + b"\r\n\r\n")
            await w.drain()
            held.append((r, w))
        except Exception:  # noqa: BLE001
            w.close()

    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


async def one(port, sem, conns, errors):
    async with sem:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            w.write(b"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            await w.drain()
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            if not head.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(head[:40])
            conns.append((r, w))
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))


async def clients(port, n, hold):
    sem = asyncio.Semaphore(200)
    conns, errors = [], []
    await asyncio.gather(*(one(port, sem, conns, errors) for _ in range(n)))
    if errors:
        print("first errors:", errors[:3], file=sys.stderr)
    print(f"READY ok={len(conns)} failed={len(errors)}", flush=True)
    await asyncio.sleep(hold)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["backend", "clients"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--hold", type=float, default=600)
    a = ap.parse_args()
    if a.mode == "backend":
        asyncio.run(backend(a.port))
    else:
        asyncio.run(clients(a.port, a.n, a.hold))


if __name__ == "__main__":
    main()
