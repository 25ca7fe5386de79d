// Drives Debian's chromium through keel's OpenID Connect sign-in page, as a person would: a
// wrong password first, then the right one, then the code from the authenticator app the
// account enrolled (computed here, RFC 6238), and "Sign in and allow"; the browser lands on the
// client's redirect URI with a code.
//
// Run by crates/compose/keel/tests/browser_signin.rs. Environment: AUTHORIZE_URL, REDIRECT_URI, EMAIL,
// PASSWORD, TOTP_SECRET (base32), SCREENSHOTS (a directory, optional). Prints one JSON line of
// what it saw; exits non-zero on the first failed check.

import { run, screenshots } from './launch.mjs';
import assert from 'node:assert/strict';
import { totp } from './totp.mjs';

const { AUTHORIZE_URL, REDIRECT_URI, EMAIL, PASSWORD, TOTP_SECRET } = process.env;

const shot = screenshots();

await run(async (browser, seen) => {
  const step = seen.step;
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(20_000);
  // The client's redirect URI serves nothing here: answer it in the browser and keep its URL.
  let landed = null;
  await page.route(`${REDIRECT_URI}**`, (route) => {
    landed = route.request().url();
    return route.fulfill({ status: 200, contentType: 'text/html', body: '<p>back at the app</p>' });
  });

  const first = await page.goto(AUTHORIZE_URL);
  assert.equal(first.status(), 200);
  await page.getByRole('heading', { name: 'Sign in to Browser App' }).waitFor();
  await shot(page, '1-sign-in');
  step('sign-in page shown');

  await page.getByLabel('Email').fill(EMAIL);
  await page.getByLabel('Password').fill('not the password at all');
  await page.getByRole('button', { name: 'Sign in and allow' }).click();
  await page.getByRole('alert').filter({ hasText: 'The email or password is not right.' }).waitFor();
  assert.equal(await page.getByLabel('Email').inputValue(), EMAIL);
  step('wrong password refused, email kept');

  await page.getByLabel('Password').fill(PASSWORD);
  await page.getByRole('button', { name: 'Sign in and allow' }).click();
  await page.getByRole('alert').filter({ hasText: 'Enter the code from your authenticator app.' }).waitFor();
  await shot(page, '2-second-factor');
  step('second factor asked');

  await page.getByLabel('Password').fill(PASSWORD);
  // The next step's code: the current one was used to confirm the enrolment.
  await page.getByLabel(/authenticator app/).fill(totp(TOTP_SECRET, Date.now() / 1000 + 30));
  await page.getByRole('button', { name: 'Sign in and allow' }).click();
  await page.getByText('back at the app').waitFor();
  assert.ok(landed && landed.startsWith(REDIRECT_URI), `landed on ${landed}`);
  const url = new URL(landed);
  seen.code = url.searchParams.get('code');
  seen.state = url.searchParams.get('state');
  assert.ok(seen.code);
  step('back at the client with a code');

  // Signed in, and the app allowed: the next request is answered with a code, no page.
  const again = await page.request.get(AUTHORIZE_URL, { maxRedirects: 0 });
  assert.equal(again.status(), 303);
  const next = new URL(again.headers()['location']);
  assert.ok(next.href.startsWith(REDIRECT_URI), `sent to ${next.href}`);
  assert.ok(next.searchParams.get('code'));
  step('allowed once, a code without a page');

  // Asked to ask again (prompt=consent), the signed-in person sees only the consent.
  await page.goto(`${AUTHORIZE_URL}&prompt=consent`);
  await page.getByText('Signed in as').waitFor();
  await shot(page, '3-consent');
  step('consent only, once signed in');
});
