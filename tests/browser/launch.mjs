// What every browser script here shares: Debian's chromium launched for this closed machine,
// and screenshots into $SCREENSHOTS when it is set.

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
