// What every browser script here shares: Debian's chromium launched for this closed machine,
// screenshots into $SCREENSHOTS when it is set, and the run with its one JSON line.

import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';

// This machine's network is closed: without these flags chromium waits on connections to
// Google services. A fresh profile (playwright's temporary user data dir) per run.
export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
    timeout: 60_000,
  });
}

// `shot(page, name)` saves a full-page screenshot when SCREENSHOTS names a directory.
export function screenshots() {
  const dir = process.env.SCREENSHOTS;
  if (dir) mkdirSync(dir, { recursive: true });
  return async (page, name) => {
    if (dir) await page.screenshot({ path: `${dir}/${name}.png`, fullPage: true });
  };
}

// Runs `steps(browser, seen)` with a fresh browser and prints one JSON line of what it saw:
// `seen` (with `steps`, filled by `seen.step(name)`) and `ok`, or the first failed check as
// `error`, then exit status 1. The Rust side reads that line.
export async function run(steps) {
  const browser = await launch();
  const seen = { steps: [] };
  Object.defineProperty(seen, 'step', { value: (name) => seen.steps.push(name) });
  try {
    await steps(browser, seen);
    seen.ok = true;
  } catch (e) {
    seen.ok = false;
    seen.error = String(e && e.stack || e);
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(seen));
  if (!seen.ok) process.exit(1);
}
