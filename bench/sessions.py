#!/usr/bin/env python3
"""Mints N distinct access tokens and presents each once to the gateway in the access cookie.

    bench/sessions.py BASE CLIENT_ID SECRET N COOKIE_NAME

Each token is a live session from the gateway's point of view: verified once, then held in the
verification and assertion caches. Tokens come from client_credentials (100,000 password sign-ins
would take ~45 minutes of Argon2); the gateway keeps the same state for a browser session's
access cookie. Eight keep-alive connections in parallel; exits non-zero if any request fails.
"""

import base64
import http.client
import json
import sys
import threading
import urllib.parse

base, client_id, secret, n, cookie = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
url = urllib.parse.urlsplit(base)
basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
THREADS = 8
failures = []


def work(count):
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    body = "grant_type=client_credentials&scope=bench%2Fadmin"
    for _ in range(count):
        conn.request("POST", "/oauth2/token", body, {
            "Authorization": f"Basic {basic}",
            "Content-Type": "application/x-www-form-urlencoded",
        })
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            failures.append(f"token: {resp.status}")
            return
        token = json.loads(data)["access_token"]
        conn.request("GET", "/api/admin/x", headers={
            "Cookie": f"{cookie}={token}",
            # A cookie-borne request from our own origin (the CSRF stage wants it for unsafe
            # methods only; GET passes without).
        })
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            failures.append(f"gateway: {resp.status}")
            return


threads = [threading.Thread(target=work, args=(n // THREADS,)) for _ in range(THREADS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if failures:
    print("failed:", failures[:5], file=sys.stderr)
    sys.exit(1)
