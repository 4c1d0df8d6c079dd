// The demo page and the JS client in headless Chromium, against two real chat-nodes and a real
// redis-server behind a real sticky-cookie nginx, all on loopback.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Redis, ChatNode, Nginx, waitFor, REPO_ROOT } from '../lib/processes.js';
import { launchChromium, pageState, send } from '../lib/browser.js';

let redis;
let nodes;
let proxy;
let browser;
let alice;
let bob;
const failures = [];

// small reconnect delays so the test does not wait on the defaults
const PAGE_QUERY = 'initialDelay=200&maxDelay=1000&maxAttempts=30&drainDelay=800';

before(async () => {
  redis = await Redis.start();
  nodes = [await ChatNode.start('chat-a', redis.url), await ChatNode.start('chat-b', redis.url)];
  proxy = await Nginx.start(nodes.map((n) => `127.0.0.1:${n.port}`));
  browser = await launchChromium();
});

after(async () => {
  if (failures.length > 0) {
    for (const n of nodes ?? []) console.error(`--- ${n.id} log ---\n${n.proc.output()}`);
  }
  await browser?.close();
  await proxy?.stop();
  for (const n of nodes ?? []) await n.stop();
  await redis?.stop();
});

/** Opens the demo as a new user (own cookie jar) and waits until it is connected. */
async function openUser(name, avoidNode) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 680 } });
  const page = await context.newPage();
  page.on('pageerror', (err) => failures.push(`${name}: ${err.message}`));
  // the sticky cookie is random; start over with a new one until this user lands on another node
  for (let tries = 0; ; tries++) {
    await page.goto(`${proxy.url}/?name=${name}&${PAGE_QUERY}`);
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

function assertEachOnce(texts, expected) {
  for (const t of expected) {
    assert.equal(texts.filter((x) => x === t).length, 1, `"${t}" shown ${texts.filter((x) => x === t).length} times`);
  }
}

test('the page is served through the proxy with the sticky cookie and the client module', async () => {
  const res = await fetch(`${proxy.url}/`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('set-cookie') ?? '', /^route=/);
  assert.match(await res.text(), /\/assets\/js\/demo\.js/);
  const client = await fetch(`${proxy.url}/client/index.js`);
  assert.equal(client.status, 200);
  assert.match(await client.text(), /ChatClient/);
});

test('two pages on different nodes chat with each other', async () => {
  ({ page: alice } = await openUser('Alice'));
  const aliceNode = (await pageState(alice)).node;
  ({ page: bob } = await openUser('Bob', aliceNode));
  assert.notEqual((await pageState(bob)).node, aliceNode);

  await send(alice, 'Hi Bob, is the cluster up?');
  await waitForTexts(bob, ['Hi Bob, is the cluster up?'], 'bob sees alice');
  await send(bob, 'Yes! Two nodes, one Redis.');
  await waitForTexts(alice, ['Yes! Two nodes, one Redis.'], 'alice sees bob');
  for (const p of [alice, bob]) {
    const s = await pageState(p);
    assert.deepEqual(s.texts, ['Hi Bob, is the cluster up?', 'Yes! Two nodes, one Redis.']);
  }
});

test('draining the node of a page: it moves to the other node and shows every message sent meanwhile exactly once', async () => {
  const aliceNode = (await pageState(alice)).node;
  const drained = nodes.find((n) => n.id === aliceNode);
  const survivor = nodes.find((n) => n.id !== aliceNode);
  const before = (await pageState(alice)).texts;

  // Record every state the page's client goes through: with a short drain delay it can be open
  // on the other node again before a poll would have seen it leave 'open'.
  await alice.evaluate(() => {
    window.seenStates = [];
    window.chatDemo.client.on('state', (s) => window.seenStates.push(s.state));
  });
  const stopped = drained.stop(); // SIGTERM: readyz 503, close 1001 spread over the drain timeout
  try {
    await waitFor('alice notices the drain', () => alice.evaluate(() => window.seenStates.some((s) => s !== 'open')));
    await moveAndRecover(stopped, survivor, before);
  } finally {
    await stopped;
    await drained.start(); // bring it back for the next test, also when this one failed
  }
});

async function moveAndRecover(stopped, survivor, before) {
  const meanwhile = ['sent while you moved #1', 'sent while you moved #2', 'sent while you moved #3'];
  for (const t of meanwhile) await send(bob, t);
  await waitForTexts(bob, meanwhile, 'bob sees his own messages');
  const status = await stopped;
  assert.equal(status.code, 0, `drained chat-node exits 0 (got ${JSON.stringify(status)})`);

  await waitFor('alice on the other node', async () => {
    const s = await pageState(alice);
    return s.state === 'open' && s.node === survivor.id;
  });
  await waitForTexts(alice, meanwhile, 'alice recovers what she missed');
  const after = await pageState(alice);
  assertEachOnce(after.texts, [...before, ...meanwhile]);
  assert.deepEqual(after.texts, [...before, ...meanwhile], 'in order, nothing else');
  assert.equal(new Set(after.offsets).size, after.offsets.length, 'no offset shown twice');

  // and the conversation goes on, both ways
  await send(alice, 'Back, on the other node now.');
  await waitForTexts(bob, ['Back, on the other node now.'], 'bob sees alice after her move');
}

test('a Redis restart: the pages keep working', async () => {
  await redis.restart();
  for (const n of nodes) await n.waitReady(); // each node reconnects and resubscribes
  await send(bob, 'Redis restarted, still here?');
  await waitForTexts(alice, ['Redis restarted, still here?'], 'alice sees bob after the restart');
  await send(alice, 'Still here.');
  await waitForTexts(bob, ['Still here.'], 'bob sees alice after the restart');
  // the node the pages are not on also delivers to them again (its Redis subscription is back)
  const aliceNode = (await pageState(alice)).node;
  const other = nodes.find((n) => n.id !== aliceNode);
  const res = await fetch(`${other.httpUrl}/api/publish`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ channel: 'chat:lobby', data: { text: 'Published through the other node.', name: 'ops-bot' } }),
  });
  assert.equal(res.status, 200, await res.text());
  await waitForTexts(alice, ['Published through the other node.'], 'alice sees the cross-node publish');
  await waitForTexts(bob, ['Published through the other node.'], 'bob sees the cross-node publish');
  for (const p of [alice, bob]) {
    const s = await pageState(p);
    assert.equal(s.state, 'open');
    assert.equal(new Set(s.offsets).size, s.offsets.length, 'no message shown twice');
  }
});

test('WebSocket refused by the proxy: the page falls back to SSE and still chats', async () => {
  const context = await browser.newContext({ viewport: { width: 1100, height: 680 } });
  await context.addCookies([{ name: 'block_websocket', value: '1', url: proxy.url }]);
  const carol = await context.newPage();
  carol.on('pageerror', (err) => failures.push(`carol: ${err.message}`));
  await carol.goto(`${proxy.url}/?name=Carol&${PAGE_QUERY}`);
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
