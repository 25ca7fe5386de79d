// Drives Debian's chromium as a new operator would: the error hospital console sends the
// browser to keel's sign-in page; signed in, the operator is refused (the operator role needs
// a second factor, and none is enrolled); the authenticator-app page shows a QR code and the
// key, the operator confirms with the app's code and gets recovery codes; signed out and in
// again with the code, the console opens.
//
// Run by crates/compose/keel/tests/browser_signin.rs. Environment: BASE_URL, EMAIL, PASSWORD,
// OPERATOR (the account id), SCREENSHOTS (a directory, optional). Prints one JSON line of what
// it saw; exits non-zero on the first failed check.

import { run, screenshots } from './launch.mjs';
import assert from 'node:assert/strict';
import { totp } from './totp.mjs';

const { BASE_URL: base, EMAIL, PASSWORD, OPERATOR } = process.env;

const shot = screenshots();

async function signIn(page, code) {
  await page.getByLabel('Email').fill(EMAIL);
  await page.getByLabel('Password').fill(PASSWORD);
  await page.getByRole('button', { name: 'Sign in' }).click();
  if (code) {
    await page.getByRole('alert').filter({ hasText: 'Enter the code from your authenticator app.' }).waitFor();
    await page.getByLabel('Password').fill(PASSWORD);
    await page.getByLabel(/authenticator app/).fill(code);
    await page.getByRole('button', { name: 'Sign in' }).click();
  }
}

await run(async (browser, seen) => {
  const step = seen.step;
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(20_000);

  const first = await page.goto(`${base}/admin/hospital`);
  assert.equal(new URL(page.url()).pathname, '/signin', 'sent to the sign-in page');
  assert.equal(first.status(), 200);
  await page.getByRole('heading', { name: 'Sign in to keel' }).waitFor();
  await shot(page, '1-sign-in');
  step('console sends to sign-in');

  const refused = page.waitForResponse((r) => new URL(r.url()).pathname === '/admin/hospital');
  await signIn(page, null);
  assert.equal((await refused).status(), 403, 'the operator role waits for a second factor');
  step('role withheld without a second factor');

  const mfa = await page.goto(`${base}/account/mfa`);
  assert.equal(mfa.status(), 200);
  const qr = page.locator('#qr svg');
  await qr.waitFor();
  const box = await qr.boundingBox();
  assert.ok(box && box.width >= 200 && box.height >= 200, `a QR code to scan: ${JSON.stringify(box)}`);
  const secret = (await page.locator('#secret').textContent()).trim();
  assert.match(secret, /^[A-Z2-7]{32}$/);
  await shot(page, '2-qr-code');
  step('QR code and key shown');

  await page.getByLabel(/6-digit code/).fill('000000');
  await page.getByRole('button', { name: 'Turn on' }).click();
  await page.getByRole('alert').filter({ hasText: 'That code is not right.' }).waitFor();
  await page.getByLabel(/6-digit code/).fill(totp(secret, Date.now() / 1000));
  await page.getByRole('button', { name: 'Turn on' }).click();
  await page.getByRole('heading', { name: 'Authenticator app on' }).waitFor();
  const codes = await page.locator('#recovery-codes li').count();
  assert.equal(codes, 10);
  await shot(page, '3-recovery-codes');
  step('enrolled, recovery codes shown');

  await page.goto(`${base}/signin`);
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('heading', { name: 'Sign in to keel' }).waitFor();
  step('signed out');

  await page.goto(`${base}/admin/hospital`);
  // The code of the next step: the current one confirmed the enrolment.
  await signIn(page, totp(secret, Date.now() / 1000 + 30));
  await page.getByText(`signed in as ${OPERATOR}`).waitFor();
  assert.equal(new URL(page.url()).pathname, '/admin/hospital');
  await shot(page, '4-console');
  step('console open with the second factor');
});
