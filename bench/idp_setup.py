"""Bench helper: obtains refresh tokens through the real sign-in form, and fires a burst of
concurrent password sign-ins. Standard library only."""
import json, re, sys, threading, time, urllib.parse, urllib.request

BASE = sys.argv[2]
REDIRECT = "http://localhost:3000/callback"
VERIFIER = "dBjftJeZ4CVP-mJ92IZtCKkpY6Q6CXMuhNNEDAWMfsP0"
CHALLENGE = "DFXps3i_qlqRZyeNV7RZ_-85sBHFqI1Ce25f8imVr2o"


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **k):
        return None


class Browser:
    """A redirect-less opener with a plain cookie jar. (http.cookiejar withholds `Secure`
    cookies over http even on localhost, where browsers send them.)"""

    def __init__(self):
        self.op = urllib.request.build_opener(NoRedirect)
        self.cookies = {}

    def open(self, req, timeout):
        if self.cookies:
            req.add_header("Cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        try:
            r = self.op.open(req, timeout=timeout)
        except urllib.error.HTTPError as e:
            r = e
        for c in r.headers.get_all("Set-Cookie") or []:
            name, _, rest = c.partition("=")
            self.cookies[name] = rest.split(";")[0]
        return r


def opener():
    return Browser()


def call(op, url, data=None):
    r = op.open(urllib.request.Request(url, data=data), timeout=60)
    return r.status if hasattr(r, "status") else r.code, r.headers, r.read().decode()


def authorize_url(client, prompt=None):
    q = {"response_type": "code", "client_id": client, "redirect_uri": REDIRECT, "scope": "openid",
         "code_challenge": CHALLENGE, "code_challenge_method": "S256"}
    if prompt:
        q["prompt"] = prompt
    return f"{BASE}/oauth2/authorize?{urllib.parse.urlencode(q)}"


def open_form(op, client, prompt=None):
    _, h, _ = call(op, authorize_url(client, prompt))
    _, _, html = call(op, BASE + h["Location"])
    field = lambda n: re.search(f'name="{n}" value="([^"]*)"', html).group(1).replace("&#x2f;", "/").replace("&amp;", "&")
    return field("request"), field("csrf")


def post_form(op, request, csrf, user, password):
    data = urllib.parse.urlencode({"request": request, "csrf": csrf, "username": user, "password": password}).encode()
    return call(op, BASE + "/login", data)


def exchange(client, code):
    data = urllib.parse.urlencode({"grant_type": "authorization_code", "client_id": client, "code": code,
                                   "redirect_uri": REDIRECT, "code_verifier": VERIFIER}).encode()
    status, _, body = call(Browser(), BASE + "/oauth2/token", data)
    assert status == 200, body
    return json.loads(body)["refresh_token"]


def tokens(client, user, password, n):
    """n refresh tokens (n sessions' worth of codes, via the provider's session cookie)."""
    op = opener()
    request, csrf = open_form(op, client)
    _, h, _ = post_form(op, request, csrf, user, password)
    out = [exchange(client, urllib.parse.parse_qs(urllib.parse.urlparse(h["Location"]).query)["code"][0])]
    while len(out) < n:
        _, h, _ = call(op, authorize_url(client))
        out.append(exchange(client, urllib.parse.parse_qs(urllib.parse.urlparse(h["Location"]).query)["code"][0]))
    print("\n".join(out))


def burst(client, user, password, n):
    """n concurrent password sign-ins; prints their latencies."""
    forms = []
    for _ in range(n):
        op = opener()
        forms.append((op,) + open_form(op, client, "login"))
    results = [None] * n
    def one(i):
        op, request, csrf = forms[i]
        t = time.monotonic()
        status, _, _ = post_form(op, request, csrf, user, password)
        results[i] = (status, time.monotonic() - t)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads: t.start()
    for t in threads: t.join()
    ok = sum(1 for s, _ in results if s == 303)
    lat = sorted(d for _, d in results)
    print(f"sign-in burst: {ok}/{n} succeeded; latency p50 {lat[n // 2] * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms")


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "tokens":
        tokens(sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]))
    elif cmd == "burst":
        burst(sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]))
