// Interoperability: openid-client (a certified OpenID Connect relying party that nobody on this
// project wrote) runs discovery, authorization code + PKCE through the real hosted sign-in form,
// ID-token validation against the JWKS, userinfo, refresh with rotation and reuse detection,
// revocation, RP-initiated logout and client credentials against the real portcullis binary.
// Started by the e2e test `interop::openid_client_runs_every_flow`, which passes its settings in
// the environment. Prints one line per step; exits non-zero on the first failure.
import * as client from 'openid-client';
import assert from 'node:assert/strict';
import { webcrypto } from 'node:crypto';

// Node.js 18 (Debian bookworm's) has Web Crypto only as `node:crypto`'s `webcrypto`; Node.js 20
// also has it as the global the library calls.
if (!globalThis.crypto) globalThis.crypto = webcrypto;

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`missing ${name}`);
  return v;
};
const ISSUER = env('ISSUER');
const REDIRECT_URI = env('REDIRECT_URI');
const LOGOUT_URI = env('LOGOUT_URI');
const step = (name) => console.log(`ok: ${name}`);
// Plain http needs openid-client's explicit opt-in; over https its strict defaults apply.
const insecure = ISSUER.startsWith('http:') ? { execute: [client.allowInsecureRequests] } : undefined;

// A tiny cookie jar for the hosted pages (the RP library does not drive the browser part).
const jar = new Map();
// Node.js 18's fetch has no getSetCookie(): there the Set-Cookie values come joined by ", "
// (ours carry Max-Age, never an Expires date with a comma, so the split is exact).
const setCookies = (headers) =>
  typeof headers.getSetCookie === 'function'
    ? headers.getSetCookie()
    : (headers.get('set-cookie') ?? '').split(/,\s*(?=[^;,=\s]+=)/).filter(Boolean);
const remember = (res) => {
  for (const c of setCookies(res.headers)) {
    const [pair] = c.split(';');
    const i = pair.indexOf('=');
    const name = pair.slice(0, i);
    const value = pair.slice(i + 1);
    if (/Max-Age=0/i.test(c) || value === '') jar.delete(name); else jar.set(name, value);
  }
};
const cookieHeader = () => [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
const get = async (url) => {
  const res = await fetch(url, { redirect: 'manual', headers: { cookie: cookieHeader() } });
  remember(res);
  return res;
};

/** Follows the authorization request through the hosted form; returns the callback URL. */
async function signIn(authUrl, username, password) {
  let res = await get(authUrl);
  assert.equal(res.status, 303, 'authorize redirects');
  let location = new URL(res.headers.get('location'), ISSUER);
  if (location.href.startsWith(REDIRECT_URI)) return location; // signed in already
  assert.equal(location.pathname, '/login');
  res = await get(location);
  assert.equal(res.status, 200);
  const html = await res.text();
  const field = (name) => html.match(new RegExp(`name="${name}" value="([^"]*)"`))[1].replaceAll('&#x2f;', '/').replaceAll('&amp;', '&');
  const form = new URLSearchParams({ request: field('request'), csrf: field('csrf'), username, password });
  res = await fetch(new URL('/login', ISSUER), {
    method: 'POST', redirect: 'manual', body: form,
    headers: { cookie: cookieHeader(), 'content-type': 'application/x-www-form-urlencoded' },
  });
  remember(res);
  assert.equal(res.status, 303, `sign-in form answers with a redirect (got ${res.status})`);
  location = new URL(res.headers.get('location'));
  assert.ok(location.href.startsWith(REDIRECT_URI), `back at the client: ${location}`);
  return location;
}

async function codeFlow(config, { username, password }) {
  const verifier = client.randomPKCECodeVerifier();
  const challenge = await client.calculatePKCECodeChallenge(verifier);
  const state = client.randomState();
  const nonce = client.randomNonce();
  const authUrl = client.buildAuthorizationUrl(config, {
    redirect_uri: REDIRECT_URI, scope: 'openid email profile', code_challenge: challenge,
    code_challenge_method: 'S256', state, nonce,
  });
  const callback = await signIn(authUrl, username, password);
  const tokens = await client.authorizationCodeGrant(config, callback, {
    pkceCodeVerifier: verifier, expectedState: state, expectedNonce: nonce, idTokenExpected: true,
  });
  return tokens;
}

const decode = (jwt) => JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString());

// 1. Discovery, as a public client (PKCE, no secret).
const spa = await client.discovery(new URL(ISSUER), env('SPA_CLIENT_ID'), undefined, client.None(), insecure);
assert.equal(spa.serverMetadata().issuer, ISSUER);
step('discovery');

// 2. Authorization code + PKCE through the hosted sign-in form; ID token validated by the library.
const first = await codeFlow(spa, { username: env('USERNAME'), password: env('PASSWORD') });
const claims = first.claims();
assert.equal(claims.iss, ISSUER);
assert.equal(claims.aud, env('SPA_CLIENT_ID'));
assert.deepEqual(claims.groups, ['user']);
assert.equal(claims.email, env('EMAIL'));
assert.ok(first.refresh_token, 'a refresh token is issued');
const access = decode(first.access_token);
assert.equal(access.token_use, 'access');
assert.equal(access.client_id, env('SPA_CLIENT_ID'));
step('authorization code + PKCE, ID token validated against the JWKS');

// 3. Userinfo.
const info = await client.fetchUserInfo(spa, first.access_token, claims.sub);
assert.equal(info.username, env('USERNAME'));
assert.equal(info.email, env('EMAIL'));
step('userinfo');

// 4. Refresh rotates the refresh token.
const second = await client.refreshTokenGrant(spa, first.refresh_token);
assert.ok(second.refresh_token && second.refresh_token !== first.refresh_token, 'rotated');
assert.equal(second.claims().sub, claims.sub);
step('refresh with rotation');

// 5. Reusing the rotated token after the grace window revokes the whole family.
await new Promise((r) => setTimeout(r, 2100));
await assert.rejects(client.refreshTokenGrant(spa, first.refresh_token), (e) => e.error === 'invalid_grant');
await assert.rejects(client.refreshTokenGrant(spa, second.refresh_token), (e) => e.error === 'invalid_grant');
step('refresh token reuse revokes the family');

// 6. Sign in again (the reuse ended the session, so the password is needed), then revoke.
const third = await codeFlow(spa, { username: env('USERNAME'), password: env('PASSWORD') });
await client.tokenRevocation(spa, third.refresh_token);
await assert.rejects(client.refreshTokenGrant(spa, third.refresh_token), (e) => e.error === 'invalid_grant');
await assert.rejects(client.fetchUserInfo(spa, third.access_token, third.claims().sub));
step('revocation of a refresh token ends its session');

// 7. A fresh sign-in, its access token revoked by itself.
const fourth = await codeFlow(spa, { username: env('USERNAME'), password: env('PASSWORD') });
await client.fetchUserInfo(spa, fourth.access_token, fourth.claims().sub);
await client.tokenRevocation(spa, fourth.access_token);
await assert.rejects(client.fetchUserInfo(spa, fourth.access_token, fourth.claims().sub));
step('revocation of an access token');

// 8. RP-initiated logout with id_token_hint; the IdP session cookie stops working.
const logoutUrl = client.buildEndSessionUrl(spa, {
  id_token_hint: fourth.id_token, post_logout_redirect_uri: LOGOUT_URI, state: 'bye',
});
const out = await get(logoutUrl);
assert.equal(out.status, 303);
assert.equal(out.headers.get('location'), `${LOGOUT_URI}?state=bye`);
await assert.rejects(client.refreshTokenGrant(spa, fourth.refresh_token), (e) => e.error === 'invalid_grant');
const again = await get(client.buildAuthorizationUrl(spa, {
  redirect_uri: REDIRECT_URI, scope: 'openid', code_challenge: await client.calculatePKCECodeChallenge(client.randomPKCECodeVerifier()),
  code_challenge_method: 'S256', prompt: 'none', state: 's',
}));
assert.equal(new URL(again.headers.get('location')).searchParams.get('error'), 'login_required');
step('logout ends the session');

// 9. Client credentials, with client_secret_basic and client_secret_post.
for (const [name, auth] of [['client_secret_basic', client.ClientSecretBasic], ['client_secret_post', client.ClientSecretPost]]) {
  const backend = await client.discovery(new URL(ISSUER), env('BACKEND_CLIENT_ID'), undefined, auth(env('BACKEND_SECRET')), insecure);
  const cc = await client.clientCredentialsGrant(backend, { scope: 'orders/read' });
  const t = decode(cc.access_token);
  assert.equal(t.scope, 'orders/read');
  assert.equal(t.client_id, env('BACKEND_CLIENT_ID'));
  assert.equal(cc.refresh_token, undefined);
  step(`client credentials (${name})`);
}
const wrong = await client.discovery(new URL(ISSUER), env('BACKEND_CLIENT_ID'), undefined, client.ClientSecretBasic('wrong-secret'), insecure);
// RFC 6749 §5.2: 401 with a Basic challenge, which the library surfaces as such.
await assert.rejects(client.clientCredentialsGrant(wrong, { scope: 'orders/read' }),
  (e) => e.error === 'invalid_client' || (e.code === 'OAUTH_WWW_AUTHENTICATE_CHALLENGE' && e.cause[0].scheme === 'basic'));
step('wrong client secret is refused');
console.log('interop: all flows passed');
