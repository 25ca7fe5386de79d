// Drives Debian's chromium through the error hospital console, as an operator would.
//
// Run by crates/edges/keel-api/tests/console/browser.rs, which starts the console on a real SQLite
// hospital with seeded patients, passes their ids in SEED, and checks the broker and the
// hospital afterwards. The test stands in for keel's sign-in: the browser names its roles in
// an x-test-roles header (keel's own browser test signs in for real). Environment: BASE_URL,
// OPERATOR (the account id), SEED (JSON), SCREENSHOTS (a directory, optional). Prints one JSON line of what it saw; exits non-zero on
// the first failed check.

import { launch, screenshots } from './launch.mjs';
import assert from 'node:assert/strict';

const base = process.env.BASE_URL;
const user = process.env.OPERATOR;
const seed = JSON.parse(process.env.SEED);

const browser = await launch();

const seen = { steps: [] };
const step = (name) => seen.steps.push(name);
const shot = screenshots();

try {
  // Not signed in: refused, and told where to sign in.
  const anonymous = await browser.newContext();
  const refused = await (await anonymous.newPage()).goto(`${base}/admin/hospital`);
  assert.equal(refused.status(), 401);
  assert.match(await refused.text(), /\/signin/);
  // Signed in without the operator or admin role: forbidden.
  const plain = await browser.newContext({ extraHTTPHeaders: { 'x-test-roles': '' } });
  const denied = await (await plain.newPage()).goto(`${base}/admin/hospital`);
  assert.equal(denied.status(), 403);
  step('refused without the role');

  // An operator lists.
  const context = await browser.newContext({ extraHTTPHeaders: { 'x-test-roles': 'operator' } });
  const page = await context.newPage();
  page.setDefaultTimeout(20_000);
  const dialogs = [];
  page.on('dialog', (d) => { dialogs.push(d.message()); d.dismiss(); });
  const listed = await page.goto(`${base}/admin/hospital`);
  assert.equal(listed.status(), 200);
  await page.getByText(`signed in as ${user}`).waitFor();
  const rows = page.locator('#patients tbody tr');
  assert.equal(await rows.count(), seed.all.length, 'every waiting patient is listed');
  await shot(page, '1-list');
  step('listed');

  // Filter: the billing timeouts only.
  await page.fill('input[name=group]', 'billing');
  await page.fill('input[name=error]', 'timeout');
  await page.click('form.filters button[type=submit]');
  await page.waitForURL(/error=timeout/);
  const filtered = await page.locator('#patients tbody tr').evaluateAll(
    (trs) => trs.map((tr) => Number(tr.id.replace('patient-', ''))));
  assert.deepEqual([...filtered].sort((a, b) => a - b), [...seed.timeouts].sort((a, b) => a - b));
  await shot(page, '2-filtered');
  step('filtered');

  // Group by cause.
  await page.click('header nav >> text=By cause');
  const causes = await page.locator('#causes tbody tr').allInnerTexts();
  assert.ok(causes.some((r) => r.includes('Timeout: billing did not answer within <n>s') && r.includes(String(seed.timeouts.length))),
    `causes: ${JSON.stringify(causes)}`);
  await shot(page, '3-causes');
  step('grouped by cause');

  // Open a patient: headers, body, every attempt, trace id, times.
  await page.goto(`${base}/admin/hospital`);
  await page.click(`#patient-${seed.edit} a`);
  await page.waitForURL(new RegExp(`/patients/${seed.edit}$`));
  assert.equal(await page.locator('#trace-id').innerText(), seed.trace_id);
  assert.ok((await page.locator('#headers').innerText()).includes('x-tenant'));
  assert.ok((await page.locator('#body').innerText()).includes('invalid currency'));
  assert.ok(await page.locator('#attempts tbody tr').count() >= 1);
  await shot(page, '4-patient');
  step('opened a patient');

  // Edit its payload.
  await page.fill('#edit-form textarea', seed.new_body);
  await page.click('#edit-form button[type=submit]');
  await page.getByText('Body saved').waitFor();
  assert.equal(await page.locator('#body').innerText(), seed.new_body);
  assert.ok((await page.locator('#original-body').innerText()).includes('invalid currency'));
  step('edited the payload');

  // Replay it: the dry run first, then for real.
  await page.click('#replay-form button[type=submit]');
  await page.waitForURL(/\/replay\?ids=/);
  assert.equal(await page.locator('#would').innerText(), '1');
  assert.ok((await page.locator('#summary').innerText()).includes('Nothing has been sent'));
  await shot(page, '5-replay-preview');
  await page.click('#confirm-replay button[type=submit]');
  await page.locator('#replayed').waitFor();
  assert.equal(await page.locator('#replayed').innerText(), '1');
  step('replayed one after its dry run');

  // Replay the filtered set: its preview, then the confirmation.
  await page.goto(`${base}/admin/hospital?group=billing&error=timeout`);
  await page.click('#replay-filtered');
  await page.waitForURL(/\/replay\?/);
  assert.equal(await page.locator('#would').innerText(), String(seed.timeouts.length));
  await shot(page, '6-bulk-preview');
  await page.click('#confirm-replay button[type=submit]');
  await page.locator('#replayed').waitFor();
  assert.equal(await page.locator('#replayed').innerText(), String(seed.timeouts.length));
  await shot(page, '7-bulk-done');
  step('replayed the filtered set after its dry run');

  // Discard one with a reason (its payload is hostile markup: it must stay text).
  await page.goto(`${base}/admin/hospital/patients/${seed.discard}`);
  assert.ok((await page.locator('#body').innerText()).includes('<img'), 'the markup shows as text');
  assert.equal(await page.locator('main img').count(), 0, 'no element was made from it');
  assert.equal(await page.evaluate(() => window.__pwned), undefined);
  await page.fill('#discard-form input[name=reason]', seed.reason);
  await page.click('#discard-form button[type=submit]');
  await page.getByText('Discarded.').waitFor();
  assert.equal(await page.locator('#settled-note').innerText(), seed.reason);
  await shot(page, '8-discarded');
  step('discarded one with a reason');

  // The audit log shows every action.
  await page.click('header nav >> text=Audit log');
  const audit = await page.locator('#audit tbody tr').allInnerTexts();
  const actions = audit.map((r) => r.split('\t')[3]);
  assert.deepEqual(actions.filter((a) => a === 'replay').length, 1 + seed.timeouts.length);
  assert.ok(actions.includes('edit') && actions.includes('discard'), JSON.stringify(actions));
  assert.ok(audit.every((r) => r.includes(`console:${user}`)));
  assert.ok(audit.some((r) => r.includes(seed.reason)));
  await shot(page, '9-audit');
  step('checked the audit log');

  // No script ran, none could: the hostile payload stayed inert.
  assert.equal(await page.evaluate(() => window.__pwned), undefined);
  assert.deepEqual(dialogs, []);
  step('no script ran');
  seen.actions = actions;
  console.log(JSON.stringify({ ok: true, ...seen }));
} finally {
  await browser.close();
}
