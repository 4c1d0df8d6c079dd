// Debian's chromium driven by playwright-core (no browser download): headless, no sandbox (we
// run as root in CI), nothing phoning home. playwright-core gives every launch a fresh temporary
// --user-data-dir and each context its own cookie jar, so each page is a separate "user".
import { chromium } from 'playwright-core';

export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--no-first-run',
  '--disable-sync',
];

export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHATCLUSTER_CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
  });
}

/** What the demo page shows: connection state, node, and the messages of the open room. */
export async function pageState(page) {
  return page.evaluate(() => ({
    state: document.getElementById('conn').dataset.state,
    node: window.chatDemo?.client.node ?? null,
    transport: window.chatDemo?.client.transport ?? null,
    texts: [...document.querySelectorAll('#messages li[data-testid="message"] .text')].map((e) => e.textContent),
    offsets: [...document.querySelectorAll('#messages li[data-testid="message"]')].map((e) => e.dataset.offset),
  }));
}

export async function send(page, text) {
  await page.fill('[data-testid="text"]', text);
  await page.click('[data-testid="send"]');
}
