// The one readiness helper of the browser tests (the cluster tests and the local proxy test).
import { setTimeout as sleep } from 'node:timers/promises';

/** Polls `check` every 100 ms until it returns truthy or `timeoutMs` passes. */
export async function waitFor(what, check, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await sleep(100);
  }
}
