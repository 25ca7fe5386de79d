// A standard relying-party library (openid-client, on oauth4webapi) against keel's OpenID
// Connect provider: discovery, then authorization requests through keel's real sign-in page
// (fetched and submitted as a browser would, cookies kept), each answer validated by the
// library: state, RFC 9207 `iss`, PKCE, the ID token's signature (EdDSA), nonce, `auth_time`
// against `max_age`, and `amr`. Then prompt=none (a code, and consent_required), userinfo, a
// refresh, and a replayed code revoking the refresh token of its first use.
//
// Run by crates/compose/keel/tests/api/oidc_rp.rs. Environment: ISSUER, CLIENT_ID, CLIENT_SECRET,
// REDIRECT_URI, EMAIL, PASSWORD. Prints one JSON line of what it saw; exits non-zero on the
// first failed check.

import * as client from 'openid-client';
import assert from 'node:assert/strict';

const { ISSUER, CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, EMAIL, PASSWORD } = process.env;
const seen = { steps: [] };
const step = (name) => seen.steps.push(name);

// The browser's cookies at keel: name → value.
const jar = new Map();
function keep(res) {
  for (const line of res.headers.getSetCookie()) {
    const [pair] = line.split(';');
    const at = pair.indexOf('=');
    const [name, value] = [pair.slice(0, at), pair.slice(at + 1)];
    if (value) jar.set(name, value); else jar.delete(name);
  }
}
const cookies = () => [...jar].map(([k, v]) => `${k}=${v}`).join('; ');

async function browse(url, init = {}) {
  const res = await fetch(url, { ...init, redirect: 'manual', headers: { ...init.headers, cookie: cookies() } });
  keep(res);
  return res;
}

// The page's hidden inputs, then the person's fields: the form as the browser posts it.
function formOf(html, fields) {
  const form = new URLSearchParams();
  for (const [, name, value] of html.matchAll(/<input type="hidden" name="([^"]+)" value="([^"]*)">/g)) {
    form.append(name, value.replaceAll('&amp;', '&').replaceAll('&quot;', '"'));
  }
  for (const [k, v] of Object.entries(fields)) form.append(k, v);
  return form;
}

// Opens the authorization URL; signs in and allows when the page asks. The URL the browser
// lands on at the client.
async function authorize(url, fields) {
  let res = await browse(url);
  if (res.status === 200) {
    const html = await res.text();
    assert.ok(fields, `a page was shown where none was expected: ${html.slice(0, 200)}`);
    res = await browse(`${ISSUER}/oauth/authorize`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: formOf(html, fields),
    });
  }
  assert.equal(res.status, 303, `a redirect to the client, not ${res.status}`);
  const location = res.headers.get('location');
  assert.ok(location.startsWith(REDIRECT_URI), location);
  return new URL(location);
}

const config = await client.discovery(
  new URL(ISSUER),
  CLIENT_ID,
  { client_secret: CLIENT_SECRET, id_token_signed_response_alg: 'EdDSA' },
  client.ClientSecretBasic(CLIENT_SECRET),
  { execute: [client.allowInsecureRequests] },
);
const metadata = config.serverMetadata();
assert.equal(metadata.authorization_response_iss_parameter_supported, true);
assert.equal(metadata.request_uri_parameter_supported, false);
step('discovery');

// One authorization request with everything the library checks.
async function codeFlow(params, fields, maxAge) {
  const verifier = client.randomPKCECodeVerifier();
  const nonce = client.randomNonce();
  const state = client.randomState();
  const url = client.buildAuthorizationUrl(config, {
    redirect_uri: REDIRECT_URI,
    code_challenge: await client.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
    nonce,
    state,
    ...params,
  });
  const landed = await authorize(url, fields);
  const tokens = await client.authorizationCodeGrant(config, landed, {
    pkceCodeVerifier: verifier,
    expectedNonce: nonce,
    expectedState: state,
    maxAge,
  });
  return { tokens, landed };
}

const signIn = { email: EMAIL, password: PASSWORD, decision: 'allow' };
const first = await codeFlow({ scope: 'openid email', max_age: '300' }, signIn, 300);
const claims = first.tokens.claims();
assert.deepEqual(claims.amr, ['pwd']);
assert.ok(Math.abs(claims.auth_time - Date.now() / 1000) < 60, `auth_time ${claims.auth_time}`);
seen.sub = claims.sub;
step('signed in through the page; ID token valid with max_age');

// The browser's session and the consent stand: prompt=none gets a code, no page.
const silent = await codeFlow({ scope: 'openid email', prompt: 'none', max_age: '300' }, null, 300);
assert.equal(silent.tokens.claims().auth_time, claims.auth_time, 'the sign-in\'s auth_time');
step('prompt=none: a code at once');

// A scope not allowed yet under prompt=none: consent_required, validated as keel's answer.
await assert.rejects(
  codeFlow({ scope: 'openid email profile', prompt: 'none' }, null),
  (e) => e.error === 'consent_required',
);
step('prompt=none: consent_required');

// prompt=login asks for the password again, and the new sign-in's auth_time is the ID token's.
const again = await codeFlow({ scope: 'openid email', prompt: 'login' }, signIn);
assert.ok(again.tokens.claims().auth_time >= claims.auth_time);
step('prompt=login: signed in again');

const info = await client.fetchUserInfo(config, first.tokens.access_token, claims.sub);
assert.equal(info.email, EMAIL);
const refreshed = await client.refreshTokenGrant(config, again.tokens.refresh_token);
assert.equal(refreshed.claims().auth_time, again.tokens.claims().auth_time);
step('userinfo and refresh');

// The first code again: refused, and the refresh token of its first use is revoked.
const replay = new URL(first.landed);
await assert.rejects(
  client.authorizationCodeGrant(config, replay, {
    pkceCodeVerifier: client.randomPKCECodeVerifier(),
    expectedState: replay.searchParams.get('state'),
  }),
  (e) => e.error === 'invalid_grant',
);
await assert.rejects(
  client.refreshTokenGrant(config, first.tokens.refresh_token),
  (e) => e.error === 'invalid_grant',
);
step('a replayed code revokes its refresh token');

seen.ok = true;
console.log(JSON.stringify(seen));
