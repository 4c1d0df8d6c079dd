// The demo page in headless Chromium behind a proxy that buffers responses: a real nginx on a
// loopback port in front of a local chat-node (the binary cargo built, embedded broker). Through
// it a WebSocket cannot connect (nginx forwards no Upgrade headers) and an SSE stream passes
// nothing (buffered), so the page must fall back WebSocket -> SSE -> long-polling and still
// chat. Run by hack/test.d/72-browser-proxy.sh (part of `make test`): no cluster needed.
//
// Why gzip in the proxy: `proxy_buffering on` alone still hands each piece on as soon as the
// upstream pauses (measured: SSE events came through at once), so on its own it does not break
// streaming. Proxies that break streaming in the field buffer to compress or scan whole bodies;
// gzip with large buffers (and X-Accel-Buffering ignored) is that, in nginx: a stream is held
// back until 1 MiB of output or its end, while every complete response (a long poll's) passes.
//
// Environment (all optional): CHATCLUSTER_CHAT_NODE (the chat-node binary, default
// target/debug/chat-node), CHATCLUSTER_NGINX (default `nginx` on PATH), CHATCLUSTER_CHROMIUM,
// CHATCLUSTER_LONGPOLL_TRANSPORTS (the `transports` the chatting pages get; default all: set
// `websocket,sse` to see this test fail without long-polling).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { launchChromium, pageState, send } from '../lib/browser.js';
import { waitFor } from '../lib/wait.js';

const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const CHAT_NODE =
  process.env.CHATCLUSTER_CHAT_NODE ?? join(process.env.CARGO_TARGET_DIR ?? join(REPO_ROOT, 'target'), 'debug/chat-node');
const NGINX = process.env.CHATCLUSTER_NGINX ?? 'nginx';
const TRANSPORTS = process.env.CHATCLUSTER_LONGPOLL_TRANSPORTS;
// Short timeouts so the fallback takes seconds: 1.5 s without a welcome / a byte of stream.
const PAGE_QUERY = `connectTimeout=1500&initialDelay=100&maxDelay=400&maxAttempts=200&pollWait=20000${
  TRANSPORTS ? `&transports=${TRANSPORTS}` : ''
}`;

const dir = mkdtempSync(join(tmpdir(), 'chat-longpoll-'));
const children = [];
const failures = [];
let node; // {listen, admin}
let proxy; // http://127.0.0.1:<port>
let browser;

/** Starts a child process; its output goes to `<dir>/<name>.log`, lines to `onLine`. */
function start(name, cmd, args, onLine) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  const log = [];
  for (const stream of [child.stdout, child.stderr]) {
    createInterface({ input: stream }).on('line', (line) => {
      log.push(line);
      onLine?.(line);
    });
  }
  child.on('exit', () => writeFileSync(join(dir, `${name}.log`), log.join('\n')));
  return child;
}

/** chat-node on loopback ports it picks itself; resolves with the addresses it logs. */
function startChatNode() {
  return new Promise((resolveAddr, reject) => {
    const child = start('chat-node', CHAT_NODE, ['--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--max-publish-rate', '0'], (line) => {
      if (!line.includes('chat-node listening')) return;
      const details = JSON.parse(line).details;
      resolveAddr({ listen: details.listen, admin: details.admin_listen });
    });
    child.on('error', reject);
    child.on('exit', (code) => reject(new Error(`chat-node exited (${code}) before listening`)));
  });
}

function freePort() {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

/** nginx as a foreground process with its own prefix, config and logs in `dir`. */
async function startNginx(upstream) {
  const port = await freePort();
  const prefix = join(dir, 'nginx');
  mkdirSync(join(prefix, 'tmp'), { recursive: true });
  const conf = join(prefix, 'nginx.conf');
  writeFileSync(
    conf,
    `daemon off;
master_process off;
worker_processes 1;
pid ${prefix}/nginx.pid;
error_log ${prefix}/error.log notice;
events { worker_connections 512; }
http {
  access_log ${prefix}/access.log;
  client_body_temp_path ${prefix}/tmp/body;
  proxy_temp_path ${prefix}/tmp/proxy;
  fastcgi_temp_path ${prefix}/tmp/fastcgi;
  uwsgi_temp_path ${prefix}/tmp/uwsgi;
  scgi_temp_path ${prefix}/tmp/scgi;
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://${upstream};
      # No Upgrade / Connection headers are passed on: WebSocket handshakes fail.
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      # The page's own origin as the node sees it (its Origin check compares it with Host).
      proxy_set_header Host $http_host;
      # Buffer responses, whatever the upstream asks for.
      proxy_buffering on;
      proxy_ignore_headers X-Accel-Buffering;
      proxy_buffers 16 64k;
      gzip on;
      gzip_proxied any;
      gzip_types text/event-stream application/json;
      gzip_min_length 1;
      gzip_buffers 16 64k;
      proxy_read_timeout 60s;
    }
  }
}
`,
  );
  start('nginx', NGINX, ['-p', prefix, '-c', conf, '-e', join(prefix, 'error.log')]);
  const url = `http://127.0.0.1:${port}`;
  await waitFor('nginx answering', async () => (await fetch(`${url}/`)).status === 200, 15000);
  return url;
}

const accessLog = () => {
  try {
    return readFileSync(join(dir, 'nginx', 'access.log'), 'utf8');
  } catch {
    return '';
  }
};

async function metric(series) {
  const text = await (await fetch(`http://${node.admin}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line ? Number(line.split(' ')[1]) : null;
}

before(async () => {
  node = await startChatNode();
  proxy = await startNginx(node.listen);
  browser = await launchChromium();
});

after(async () => {
  if (failures.length > 0) console.error(failures.join('\n'));
  await browser?.close();
  for (const child of children) child.kill('SIGTERM');
  await Promise.all(children.map((c) => (c.exitCode === null ? new Promise((r) => c.once('exit', r)) : null)));
  if (process.exitCode) console.error(`logs kept in ${dir}`);
  else rmSync(dir, { recursive: true, force: true });
});

async function openUser(name, query = PAGE_QUERY) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 680 } });
  const page = await context.newPage();
  page.on('pageerror', (err) => failures.push(`${name}: ${err.message}`));
  await page.goto(`${proxy}/?name=${name}&${query}`);
  return page;
}

async function waitForTexts(page, texts, what) {
  await waitFor(what, async () => {
    const shown = (await pageState(page)).texts;
    return texts.every((t) => shown.includes(t));
  });
}

test('the proxy really breaks WebSocket and streaming, and passes whole responses', async () => {
  const upgrade = await new Promise((resolveStatus, reject) => {
    const req = request(`${proxy}/ws`, {
      headers: { Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Version': '13', 'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==' },
    });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolveStatus(res.statusCode);
    });
    req.on('response', (res) => {
      res.resume();
      resolveStatus(res.statusCode);
    });
    req.on('error', reject);
    req.end();
  });
  assert.notEqual(upgrade, 101, 'no upgrade through the proxy');
  // An SSE stream: chat-node writes its `subscribed` event at once; through the proxy nothing
  // (not even the response head) arrives within 3 s.
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), 3000);
  const direct = await fetch(`http://${node.listen}/sse?channel=chat:probe`, { signal: AbortSignal.timeout(3000) });
  const reader = direct.body.getReader();
  assert.match(new TextDecoder().decode((await reader.read()).value), /event: subscribed/, 'direct: at once');
  await reader.cancel();
  await assert.rejects(fetch(`${proxy}/sse?channel=chat:probe`, { signal: controller.signal }), /abort/i);
  clearTimeout(timer);
  const poll = await fetch(`${proxy}/poll?channel=chat:probe&wait=0`);
  assert.equal(poll.status, 200);
  assert.deepEqual((await poll.json()).messages, []);
});

test('two pages chat through the buffering proxy over long-polling, after WebSocket and SSE failed', async () => {
  const alice = await openUser('Alice');
  const bob = await openUser('Bob');
  for (const [who, page] of [['alice', alice], ['bob', bob]]) {
    await waitFor(`${who} on long-polling`, async () => {
      const s = await pageState(page);
      return s.state === 'open' && s.transport === 'longpoll';
    });
  }
  assert.equal(await alice.textContent('[data-testid="conn-transport"]'), 'long-polling');
  // The order it took: WebSocket handshakes refused, SSE attempts given up, then polls.
  const log = accessLog();
  const first = (what) => log.indexOf(what);
  assert.ok(first('"GET /ws') >= 0, 'WebSocket tried');
  assert.ok(first('"GET /sse?') > first('"GET /ws'), 'then SSE');
  assert.ok(first('"GET /poll?') > first('"GET /sse?'), 'then long-polling');

  await send(alice, 'Hi Bob, only whole responses get through here');
  await waitForTexts(bob, ['Hi Bob, only whole responses get through here'], 'bob sees alice');
  await send(bob, 'And long-polling sends whole responses');
  await waitForTexts(alice, ['And long-polling sends whole responses'], 'alice sees bob');
  // A page shows its own message when it comes back from the channel: wait for both there too.
  const both = ['Hi Bob, only whole responses get through here', 'And long-polling sends whole responses'];
  await waitForTexts(alice, both, 'alice shows both');
  await waitForTexts(bob, both, 'bob shows both');
  for (const page of [alice, bob]) {
    const { texts } = await pageState(page);
    for (const t of ['Hi Bob, only whole responses get through here', 'And long-polling sends whole responses']) {
      assert.equal(texts.filter((x) => x === t).length, 1, `"${t}" shown once`);
    }
  }
  // A page opened later loads the room's history over HTTP and then follows it.
  const carol = await openUser('Carol');
  await waitForTexts(carol, ['Hi Bob, only whole responses get through here', 'And long-polling sends whole responses'], 'carol loads history');
  await waitFor('carol on long-polling', async () => (await pageState(carol)).transport === 'longpoll');
  await send(carol, 'Late, but here');
  await waitForTexts(alice, ['Late, but here'], 'alice sees carol');
  await waitForTexts(bob, ['Late, but here'], 'bob sees carol');
  assert.ok((await metric('chat_long_polls_total{result="messages"}')) >= 4, 'answered by polls with messages');
  assert.equal(failures.length, 0, failures.join('\n'));
});

test('without long-polling the same page cannot connect through that proxy', async () => {
  // The control: WebSocket and SSE only. After it gave up on SSE twice it is still not open.
  const dave = await openUser('Dave', 'connectTimeout=1500&initialDelay=100&maxDelay=400&maxAttempts=200&transports=websocket,sse&rooms=nopoll');
  const sseAttempts = () => accessLog().split('\n').filter((l) => l.includes('"GET /sse?') && l.includes('nopoll')).length;
  await waitFor('dave gave up on SSE twice', async () => sseAttempts() >= 2);
  const s = await pageState(dave);
  assert.notEqual(s.state, 'open', `never connected (${s.state})`);
  assert.equal(s.transport, null);
  assert.equal(accessLog().split('\n').filter((l) => l.includes('"GET /poll?') && l.includes('nopoll')).length, 0, 'and it never polls');
});
