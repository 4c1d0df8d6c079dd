// A dead connection is noticed: connect timeout, ping/pong paced by the server's heartbeat,
// the SSE stream's keep-alive comments, and a refused token told apart from a dead node after
// a failed handshake (browsers hide its status). All time is the fake clock's.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChatClient } from '../src/index.js';
import { FakeClock, fakeWebSocketClass, fakeFetch, message, flush } from './fakes.js';

function setup(options = {}) {
  const clock = new FakeClock();
  const WS = fakeWebSocketClass();
  const fetch = fakeFetch();
  const states = [];
  const errors = [];
  const client = new ChatClient({
    url: 'ws://chat.test/ws',
    WebSocket: WS,
    fetch,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    random: () => 0,
    sse: false,
    reconnect: { initialDelay: 100, maxDelay: 1000, factor: 2, maxAttempts: 5 },
    ...options,
  });
  client.on('state', (s) => states.push(s));
  client.on('error', (e) => errors.push(e.code));
  return { client, clock, WS, fetch, states, errors, ws: () => WS.instances.at(-1) };
}

test('connect timeout: a socket that never opens is given up and retried with backoff', () => {
  const { client, clock, WS, ws, states, errors } = setup({ connectTimeout: 5000 });
  client.connect();
  const first = ws();
  clock.advance(4999);
  assert.equal(client.state, 'connecting');
  clock.advance(1);
  assert.deepEqual(errors, ['connect_timeout']);
  assert.ok(first.closedByClient, 'the hanging socket is closed');
  assert.equal(states.at(-1).state, 'reconnecting');
  assert.equal(states.at(-1).code, 1006);
  clock.advance(states.at(-1).delay);
  assert.equal(WS.instances.length, 2);
  // a late event of the abandoned socket changes nothing
  first.serverOpen();
  assert.equal(client.state, 'reconnecting');
  assert.equal(first.sent.length, 0);
  // the next attempt answers in time: no timeout fires afterwards
  ws().serverOpen();
  clock.advance(20_000);
  assert.equal(client.state, 'open');
  assert.equal(WS.instances.length, 2);
  assert.deepEqual(errors, ['connect_timeout']);
});

test('connect timeout runs until welcome: an upgrade that passes no frames is a failed handshake too', () => {
  const { client, clock, WS, ws, errors } = setup({ connectTimeout: 3000 });
  client.connect();
  ws().serverOpen(null); // open, but no welcome ever (a proxy that swallows frames)
  clock.advance(3000);
  assert.deepEqual(errors, ['connect_timeout']);
  assert.equal(client.state, 'reconnecting');
  clock.advance(100);
  assert.equal(WS.instances.length, 2);
});

test('two connect timeouts lead to the SSE fallback like two refused handshakes', async () => {
  const { client, clock, fetch } = setup({ sse: true, connectTimeout: 1000, sseAfterFailures: 2 });
  client.subscribe('chat:a', () => {});
  client.connect();
  clock.advance(1000);
  clock.advance(100);
  fetch.next.push({ stream: true });
  clock.advance(1000);
  await flush();
  assert.equal(fetch.requests.length, 1);
  assert.equal(fetch.requests[0].url.pathname, '/sse');
  assert.equal(client.transport, 'sse');
});

test('liveness: a ping each announced interval; any frame keeps the connection', () => {
  const { client, clock, ws, errors } = setup();
  client.connect();
  ws().serverOpen({ node: 'chat-0', heartbeat: 1, heartbeat_ms: 1500 });
  clock.advance(1499);
  assert.equal(ws().sentOfType('ping').length, 0);
  clock.advance(1);
  const [ping] = ws().sentOfType('ping');
  assert.match(ping.ref, /^k-/);
  ws().serverSend({ type: 'pong', ref: ping.ref });
  clock.advance(1500);
  assert.equal(ws().sentOfType('ping').length, 2);
  // no pong this time, but a message arrives: the connection is alive
  ws().serverSend(message('chat:a', '1-0'));
  clock.advance(1500);
  assert.equal(ws().sentOfType('ping').length, 3);
  // a node older than `ping` answers unknown_type with the ping's ref: alive, and no error event
  ws().serverSend({ type: 'error', code: 'unknown_type', message: 'no', ref: ws().sentOfType('ping')[2].ref });
  clock.advance(1500);
  assert.equal(client.state, 'open');
  assert.deepEqual(errors, []);
});

test('liveness: a half-open connection is noticed within 2 heartbeats, whenever it dies, and recovered with since', async () => {
  const h = 1000;
  // The connection dies at different points of the ping cycle (ms after the last tick).
  for (const phase of [0, 1, 250, 500, 999]) {
    const { client, clock, WS, ws, states, errors } = setup({ random: () => 0 });
    const got = [];
    client.subscribe('chat:a', (m) => got.push(m.offset));
    client.connect();
    ws().serverOpen({ node: 'chat-0', heartbeat: 1, heartbeat_ms: h });
    ws().acceptSubscribes({ 'chat:a': '10-0' });
    // a healthy phase: every ping answered
    for (let i = 0; i < 3; i++) {
      clock.advance(h);
      ws().serverSend({ type: 'pong', ref: ws().sentOfType('ping').at(-1).ref });
    }
    clock.advance(phase);
    ws().serverSend(message('chat:a', '11-0'));
    const inFlight = client.publish('chat:a', 'x');
    // from here on the server hears nothing and says nothing (a half-open TCP connection)
    const diedAt = clock.now;
    const dead = ws();
    while (dead.closedByClient === undefined) {
      clock.advance(1);
      assert.ok(clock.now - diedAt <= 2 * h, `phase ${phase}: not noticed within 2 heartbeats`);
    }
    assert.equal(dead.closedByClient, 4000);
    assert.deepEqual(errors, ['heartbeat_timeout']);
    assert.equal(states.at(-1).state, 'reconnecting');
    assert.equal(states.at(-1).code, 4000);
    await assert.rejects(inFlight, { code: 'connection_lost' });
    clock.advance(states.at(-1).delay);
    assert.equal(WS.instances.length, 2, `phase ${phase}`);
    ws().serverOpen({ node: 'chat-1', heartbeat: 1, heartbeat_ms: h });
    assert.equal(ws().sentOfType('subscribe')[0].since, '11-0');
    ws().serverSend({ type: 'subscribed', channel: 'chat:a', offset: '12-0', recovered: 1 });
    ws().serverSend(message('chat:a', '12-0'));
    assert.deepEqual(got, ['11-0', '12-0']);
    // frames of the dead socket arriving late are ignored
    dead.serverSend(message('chat:a', '99-0'));
    assert.deepEqual(got, ['11-0', '12-0']);
    client.close();
  }
});

test('liveness follows `heartbeat` (seconds) from older nodes; the option overrides; 0 turns it off', () => {
  const a = setup();
  a.client.connect();
  a.ws().serverOpen({ heartbeat: 7 }); // no heartbeat_ms
  a.clock.advance(6999);
  assert.equal(a.ws().sentOfType('ping').length, 0);
  a.clock.advance(1);
  assert.equal(a.ws().sentOfType('ping').length, 1);

  const b = setup({ heartbeat: 400 });
  b.client.connect();
  b.ws().serverOpen({ heartbeat: 30, heartbeat_ms: 30000 });
  b.clock.advance(400);
  assert.equal(b.ws().sentOfType('ping').length, 1);
  b.clock.advance(400);
  assert.equal(b.client.state, 'reconnecting', 'no answer to the ping within the interval');

  const c = setup({ heartbeat: 0 });
  c.client.connect();
  c.ws().serverOpen();
  c.clock.advance(10 * 60_000);
  assert.equal(c.ws().sentOfType('ping').length, 0);
  assert.equal(c.client.state, 'open');
  assert.deepEqual(c.clock.pending(), [], 'no timer left behind');
});

test('close() stops the liveness timers', () => {
  const { client, clock, ws } = setup();
  client.connect();
  ws().serverOpen();
  assert.ok(clock.pending().length > 0);
  client.close();
  assert.deepEqual(clock.pending(), []);
  clock.advance(120_000);
  assert.equal(ws().sentOfType('ping').length, 0);
});

test('SSE off: a failed handshake is probed with a GET; 401 asks the app for a fresh token', async () => {
  const reasons = [];
  const { client, clock, WS, fetch, ws } = setup({
    token: 'expired',
    getToken: (reason) => {
      reasons.push(reason);
      return 'fresh';
    },
  });
  client.connect();
  fetch.next.push({ status: 401, json: { code: 'unauthorized', message: 'token expired' } });
  ws().serverRefuse(); // what a browser reports for a 401 handshake
  await flush();
  assert.equal(fetch.requests.length, 1);
  const { url, init } = fetch.requests[0];
  assert.equal(url.toString(), 'http://chat.test/ws');
  assert.equal(init.headers.Authorization, 'Bearer expired');
  assert.deepEqual(reasons, ['HTTP 401 on the WebSocket handshake']);
  clock.advance(0);
  assert.equal(WS.instances.length, 2);
  assert.deepEqual(ws().protocols, ['chat.v1', 'bearer.fresh']);
});

test('SSE off: a probe answering anything but 401 (or nothing) means backoff as usual, no token refresh', async () => {
  let asked = 0;
  const { client, clock, WS, fetch, ws, states } = setup({
    token: 'tok',
    connectTimeout: 2000,
    getToken: () => {
      asked++;
      return 'fresh';
    },
  });
  client.connect();
  fetch.next.push({ status: 426 }); // the node is up, the token is fine: some other failure
  ws().serverRefuse();
  await flush();
  assert.equal(states.at(-1).state, 'reconnecting');
  clock.advance(states.at(-1).delay);
  assert.equal(WS.instances.length, 2);
  fetch.next.push({ throw: 'connection refused' }); // the node is down
  ws().serverRefuse();
  await flush();
  clock.advance(states.at(-1).delay);
  assert.equal(WS.instances.length, 3);
  fetch.next.push({ hang: true }); // the probe hangs: given up after connectTimeout
  ws().serverRefuse();
  await flush();
  assert.equal(WS.instances.length, 3);
  clock.advance(2000);
  assert.ok(fetch.requests[2].init.signal.aborted, 'the hanging probe is aborted');
  clock.advance(states.at(-1).delay);
  assert.equal(WS.instances.length, 4);
  assert.equal(asked, 0);
  assert.deepEqual(ws().protocols, ['chat.v1', 'bearer.tok']);
});

test('SSE: keep-alive comments keep a quiet stream; a stalled one is dropped within 2 heartbeats', async () => {
  // The stream's last byte arrives at different points of the check cycle (ms after a comment).
  for (const phase of [0, 1, 250, 499, 999]) {
    const { client, clock, WS, fetch, ws, states, errors } = setup({
      sse: true,
      sseAfterFailures: 1,
      heartbeat: 1000,
    });
    client.subscribe('chat:a', () => {});
    client.connect();
    fetch.next.push({ stream: true });
    ws().serverRefuse();
    await flush();
    assert.equal(client.transport, 'sse');
    const stream = fetch.streams[0];
    // quiet but alive: a comment every interval, for 10 intervals
    for (let i = 0; i < 10; i++) {
      clock.advance(1000);
      stream.comment();
      await flush();
    }
    clock.advance(phase);
    stream.event(message('chat:a', '5-0'));
    await flush();
    assert.equal(client.transport, 'sse');
    const lastByte = clock.now;
    // then nothing: a stalled stream (a proxy that stopped passing it on)
    while (client.transport === 'sse') {
      clock.advance(1);
      await flush();
      assert.ok(clock.now - lastByte <= 2000, `phase ${phase}: a stalled stream not noticed within 2 heartbeats`);
    }
    assert.ok(clock.now - lastByte > 1500, `phase ${phase}: dropped after ${clock.now - lastByte} ms of silence`);
    assert.ok(fetch.requests[0].init.signal.aborted);
    assert.deepEqual(errors.filter((e) => e === 'heartbeat_timeout'), ['heartbeat_timeout']);
    assert.equal(states.at(-1).state, 'reconnecting');
    assert.equal(states.at(-1).code, 4000);
    clock.advance(states.at(-1).delay);
    assert.equal(WS.instances.length, 2, 'WebSocket first again');
    ws().serverOpen();
    assert.equal(ws().sentOfType('subscribe')[0].since, '5-0');
    client.close();
  }
});

test('SSE: a stream request that never answers is given up after connectTimeout', async () => {
  const { client, clock, WS, fetch, ws, errors } = setup({ sse: true, sseAfterFailures: 1, connectTimeout: 3000 });
  client.subscribe('chat:a', () => {});
  client.connect();
  fetch.next.push({ hang: true });
  ws().serverRefuse();
  await flush();
  clock.advance(2999);
  await flush();
  assert.equal(client.state, 'reconnecting');
  assert.equal(WS.instances.length, 1);
  clock.advance(1);
  await flush();
  assert.ok(fetch.requests[0].init.signal.aborted);
  assert.ok(errors.includes('connect_timeout'));
  clock.advance(100);
  assert.equal(WS.instances.length, 2);
});
