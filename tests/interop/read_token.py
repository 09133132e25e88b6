#!/usr/bin/env python3
"""Read a DCOR access token (.dcor-access) the way DCOR-Aid does (dclab, stdlib only).

    TOKEN_PASSWORD=... python3 tests/interop/read_token.py PATH

Mirrors dclab.rtdc_dataset.fmt_dcor.access_token: ZipFile.read(name, pwd=password.encode())
for "api_key.txt" (decoded, stripped) and "server.cert", and the hostname is the subject
commonName that ssl._ssl._test_decode_cert() reports for the certificate written to a temp
file. The password comes from the environment, never from argv.

Prints one JSON object on stdout:
    {"api_key": "...", "hostname": "...", "cert_sha256": "<hex of server.cert bytes>"}
On any failure prints "<ExceptionType>: <message>" on stderr and exits 1.
(A wrong password is usually RuntimeError "Bad password for file 'api_key.txt'", but about
1 in 256 wrong passwords pass ZipCrypto's check byte and fail later with zlib.error or
BadZipFile, so callers should not rely on the exception type.)
"""
import hashlib
import json
import os
import pathlib
import ssl
import sys
import tempfile
import zipfile


def read_token(path, password):
    pwd = password.encode("utf-8")
    with zipfile.ZipFile(path) as arc:
        api_key = arc.read("api_key.txt", pwd=pwd).decode().strip()
    with zipfile.ZipFile(path) as arc:
        cert = arc.read("server.cert", pwd=pwd)
    with tempfile.TemporaryDirectory(prefix="dcoraid_access_token_") as td:
        cfile = pathlib.Path(td) / "server.cert"
        cfile.write_bytes(cert)
        info = ssl._ssl._test_decode_cert(str(cfile))
    for ((key, value),) in info["subject"]:
        if key == "commonName":
            hostname = value.strip()
            break
    else:
        raise KeyError("Could not extract hostname from certificate!")
    return {
        "api_key": api_key,
        "hostname": hostname,
        "cert_sha256": hashlib.sha256(cert).hexdigest(),
    }


def main(argv):
    if len(argv) != 2:
        print("usage: TOKEN_PASSWORD=... read_token.py PATH", file=sys.stderr)
        return 2
    password = os.environ.get("TOKEN_PASSWORD")
    if password is None:
        print("ValueError: TOKEN_PASSWORD is not set", file=sys.stderr)
        return 1
    try:
        result = read_token(argv[1], password)
    except BaseException as e:  # noqa: BLE001 - report whatever dclab would have raised
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
