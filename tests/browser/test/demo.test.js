// The demo page and the JS client in headless Chromium, served through Traefik by real chat-node
// pods (examples/basic.yaml on the test harness's real node, with its managed Redis pod), as a
// user of `make run` opens it. Started by the e2e suite (tests/e2e, browser.rs); see lib/cluster.js.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { DEMO_URL, CHAT, REPO_ROOT, chatNodes, chatCondition, kubectl, waitFor, waitForNodes } from '../lib/cluster.js';
import { launchChromium, pageState, send } from '../lib/browser.js';

let browser;
let alice;
let bob;
const failures = [];

// small reconnect delays so the test does not wait on the defaults
const PAGE_QUERY = 'initialDelay=200&maxDelay=1000&maxAttempts=60&drainDelay=800';

before(async () => {
  await waitForNodes(2);
  browser = await launchChromium();
});

after(async () => {
  if (failures.length > 0) console.error(failures.join('\n'));
  await browser?.close();
});

/** Opens the demo as a new user (own cookie jar) and waits until it is connected. */
async function openUser(name, avoidNode) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 680 } });
  const page = await context.newPage();
  page.on('pageerror', (err) => failures.push(`${name}: ${err.message}`));
  // the sticky cookie picks a pod; start over with a new one until this user lands elsewhere
  for (let tries = 0; ; tries++) {
    await page.goto(`${DEMO_URL}/?name=${name}&${PAGE_QUERY}`);
    await waitFor(`${name} connected`, async () => (await pageState(page)).node);
    const { node } = await pageState(page);
    if (node !== avoidNode) return { page, context };
    assert.ok(tries < 40, `${name} kept landing on ${avoidNode}`);
    await context.clearCookies();
  }
}

async function waitForTexts(page, texts, what) {
  await waitFor(what, async () => {
    const shown = (await pageState(page)).texts;
    return texts.every((t) => shown.includes(t));
  });
}

/** The page's "Online (n): …" line (presence of the open room), '' while hidden. */
async function onlineText(page) {
  return page.evaluate(() => {
    const p = document.querySelector('[data-testid="online"]');
    return p && !p.hidden ? p.textContent : '';
  });
}

async function waitForOnline(page, n, what) {
  await waitFor(what, async () => (await onlineText(page)).startsWith(`Online (${n}):`));
}

function assertEachOnce(texts, expected) {
  for (const t of expected) {
    assert.equal(texts.filter((x) => x === t).length, 1, `"${t}" shown ${texts.filter((x) => x === t).length} times`);
  }
}

test('the page is served through Traefik with the sticky cookie and the client module', async () => {
  const res = await fetch(`${DEMO_URL}/`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('set-cookie') ?? '', /^chat-node=/, 'Traefik sets the affinity cookie');
  assert.match(await res.text(), /\/assets\/js\/demo\.js/);
  const client = await fetch(`${DEMO_URL}/client/index.js`);
  assert.equal(client.status, 200);
  assert.match(await client.text(), /ChatClient/);
});

test('two pages on different pods chat with each other', async () => {
  ({ page: alice } = await openUser('Alice'));
  const aliceNode = (await pageState(alice)).node;
  ({ page: bob } = await openUser('Bob', aliceNode));
  assert.notEqual((await pageState(bob)).node, aliceNode);
  const pods = (await chatNodes()).map((n) => n.name);
  assert.ok(pods.includes(aliceNode) && pods.includes((await pageState(bob)).node), 'the nodes are the pods');

  await send(alice, 'Hi Bob, is the cluster up?');
  await waitForTexts(bob, ['Hi Bob, is the cluster up?'], 'bob sees alice');
  await send(bob, 'Yes! Two pods, one Redis.');
  await waitForTexts(alice, ['Yes! Two pods, one Redis.'], 'alice sees bob');
  // a page shows its own message when it comes back from the channel, maybe after the other's
  await waitForTexts(bob, ['Yes! Two pods, one Redis.'], 'bob sees his own reply');
  for (const p of [alice, bob]) {
    const s = await pageState(p);
    assert.deepEqual(s.texts, ['Hi Bob, is the cluster up?', 'Yes! Two pods, one Redis.']);
  }
  // who is online, across the two pods: presence and join/leave of the `chat` namespace
  // (examples/basic.yaml's spec.channels), each page listing itself as "(you)"
  await waitForOnline(alice, 2, 'alice sees two online');
  await waitForOnline(bob, 2, 'bob sees two online');
  assert.match(await onlineText(alice), /Alice \(you\)/);

  // someone joining later sees the conversation so far (the room opens with its last messages)
  const { page: carol, context } = await openUser('Carol');
  await waitForTexts(carol, ['Hi Bob, is the cluster up?', 'Yes! Two pods, one Redis.'], 'carol loads the history');
  assert.deepEqual((await pageState(carol)).texts, ['Hi Bob, is the cluster up?', 'Yes! Two pods, one Redis.']);
  await waitForOnline(alice, 3, 'alice sees carol join');
  await context.close();
  await waitForOnline(alice, 2, 'alice sees carol leave');
});

test("deleting the pod of a page: it moves to another pod and shows every message sent meanwhile exactly once", async () => {
  const aliceNode = (await pageState(alice)).node;
  const before = (await pageState(alice)).texts;
  // Record every state the page's client goes through: with a short drain delay it can be open
  // on the other pod again before a poll would have seen it leave 'open'.
  await alice.evaluate(() => {
    window.seenStates = [];
    window.chatDemo.client.on('state', (s) => window.seenStates.push(s.state));
  });
  // As a rollout or a drain does it: graceful deletion, preStop, then chat-node drains (1001).
  await kubectl('delete', 'pod', aliceNode, '--wait=false');
  await waitFor('alice notices the drain', () => alice.evaluate(() => window.seenStates.some((s) => s !== 'open')), 60000);

  const meanwhile = ['sent while you moved #1', 'sent while you moved #2', 'sent while you moved #3'];
  for (const t of meanwhile) await send(bob, t);
  await waitForTexts(bob, meanwhile, 'bob sees his own messages');
  await waitFor('alice on another pod', async () => {
    const s = await pageState(alice);
    return s.state === 'open' && s.node && s.node !== aliceNode;
  }, 60000);
  await waitForTexts(alice, meanwhile, 'alice recovers what she missed');
  const after = await pageState(alice);
  assertEachOnce(after.texts, [...before, ...meanwhile]);
  assert.deepEqual(after.texts, [...before, ...meanwhile], 'in order, nothing else');
  assert.equal(new Set(after.offsets).size, after.offsets.length, 'no offset shown twice');

  // and the conversation goes on, both ways
  await send(alice, 'Back, on another pod now.');
  await waitForTexts(bob, ['Back, on another pod now.'], 'bob sees alice after her move');
  await waitForNodes(2); // the Deployment replaced the pod
});

test('deleting the Redis pod: the pages keep working on their connections', async () => {
  await kubectl('delete', 'pod', `${CHAT}-redis-0`, '--wait=false');
  await waitFor('RedisReady again', async () => (await chatCondition('RedisReady'))?.status === 'True', 120000);
  // each node reconnects to the new Redis and resubscribes; its /readyz (on the pod) says so
  await waitFor('every chat-node ready on the new Redis', async () => {
    const nodes = await chatNodes();
    const answers = await Promise.all(nodes.map((n) => fetch(`http://${n.ip}:9091/readyz`).then((r) => r.status, () => 0)));
    return nodes.length === 2 && answers.every((s) => s === 200);
  }, 120000);
  await send(bob, 'Redis restarted, still here?');
  await waitForTexts(alice, ['Redis restarted, still here?'], 'alice sees bob after the restart');
  await send(alice, 'Still here.');
  await waitForTexts(bob, ['Still here.'], 'bob sees alice after the restart');
  // the pod the page is not on also delivers to it again (its Redis subscription is back)
  const aliceNode = (await pageState(alice)).node;
  const other = (await chatNodes()).find((n) => n.name !== aliceNode);
  const res = await fetch(`http://${other.ip}:8080/api/publish`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ channel: 'chat:lobby', data: { text: 'Published through the other pod.', name: 'ops-bot' } }),
  });
  assert.equal(res.status, 200, await res.text());
  await waitForTexts(alice, ['Published through the other pod.'], 'alice sees the cross-pod publish');
  await waitForTexts(bob, ['Published through the other pod.'], 'bob sees the cross-pod publish');
  for (const p of [alice, bob]) {
    const s = await pageState(p);
    assert.equal(s.state, 'open');
    assert.equal(new Set(s.offsets).size, s.offsets.length, 'no message shown twice');
  }
});

test('a network that breaks WebSockets: the page falls back to SSE through Traefik and still chats', async () => {
  const context = await browser.newContext({ viewport: { width: 1100, height: 680 } });
  // What a page sees behind a proxy that refuses the upgrade: the handshake fails (close 1006,
  // never open). Everything else (SSE, HTTP publish) goes through Traefik to the pods.
  await context.addInitScript(() => {
    window.WebSocket = class RefusedWebSocket extends EventTarget {
      constructor(url) {
        super();
        this.url = url;
        this.readyState = 0;
        setTimeout(() => {
          this.readyState = 3;
          this.onerror?.(new Event('error'));
          this.onclose?.({ code: 1006, reason: '', wasClean: false });
        }, 10);
      }
      send() {
        throw new Error('not open');
      }
      close() {}
    };
  });
  const carol = await context.newPage();
  carol.on('pageerror', (err) => failures.push(`carol: ${err.message}`));
  await carol.goto(`${DEMO_URL}/?name=Carol&${PAGE_QUERY}`);
  await waitFor('carol on SSE', async () => {
    const s = await pageState(carol);
    return s.state === 'open' && s.transport === 'sse';
  });
  assert.equal(await carol.textContent('[data-testid="conn-transport"]'), 'SSE');
  await send(bob, 'Carol, can you read this without WebSocket?');
  await waitForTexts(carol, ['Carol, can you read this without WebSocket?'], 'carol receives over SSE');
  await send(carol, 'Yes, over SSE, and I publish over HTTP.');
  await waitForTexts(bob, ['Yes, over SSE, and I publish over HTTP.'], 'bob sees carol');
  const s = await pageState(carol);
  assert.equal(new Set(s.offsets).size, s.offsets.length, 'no message shown twice');
  await context.close();
});

test('screenshot of the demo page', async () => {
  const dir = process.env.CHATCLUSTER_UPDATE_SCREENSHOT ? join(REPO_ROOT, 'docs/img') : join(REPO_ROOT, 'tests/browser/out');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'demo.png');
  await alice.screenshot({ path: file });
  assert.deepEqual(failures, [], 'no uncaught errors in the pages');
});
