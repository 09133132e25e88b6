#!/usr/bin/env python3
"""A TLS front for a plain-http server on loopback, with Python's ssl (as a DCOR site's
nginx would be with its self-signed certificate).

    tls_proxy.py CERT_PEM KEY_PEM TARGET_PORT

Listens on 127.0.0.1 on a free port, prints "READY <port>" on stdout once listening,
terminates TLS with CERT_PEM/KEY_PEM and forwards the bytes to 127.0.0.1:TARGET_PORT.
Runs until killed. Handshake failures (a client that does not trust the certificate)
are logged to stderr and the connection is dropped.
"""
import socket
import ssl
import sys
import threading


def pipe(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def handle(ctx, raw, target_port):
    try:
        conn = ctx.wrap_socket(raw, server_side=True)
    except (ssl.SSLError, OSError) as e:
        print(f"handshake failed: {e}", file=sys.stderr, flush=True)
        raw.close()
        return
    try:
        up = socket.create_connection(("127.0.0.1", target_port))
    except OSError as e:
        print(f"upstream: {e}", file=sys.stderr, flush=True)
        conn.close()
        return
    back = threading.Thread(target=pipe, args=(up, conn), daemon=True)
    back.start()
    pipe(conn, up)
    back.join(timeout=120)
    conn.close()
    up.close()


def main(argv):
    if len(argv) != 4:
        print("usage: tls_proxy.py CERT_PEM KEY_PEM TARGET_PORT", file=sys.stderr)
        return 2
    cert, key, target_port = argv[1], argv[2], int(argv[3])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    print(f"READY {srv.getsockname()[1]}", flush=True)
    while True:
        raw, _ = srv.accept()
        threading.Thread(target=handle, args=(ctx, raw, target_port), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
