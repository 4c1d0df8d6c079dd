import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChatClient } from '../src/index.js';
import { FakeClock, fakeWebSocketClass, fakeFetch, flush, refuseWebSocketsTwiceThenStream } from './fakes.js';

function setup(options = {}) {
  const clock = new FakeClock();
  const WS = fakeWebSocketClass();
  const fetch = fakeFetch();
  const client = new ChatClient({
    url: 'wss://chat.test/prefix/ws',
    WebSocket: WS,
    fetch,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    random: () => 0,
    sseAfterFailures: 2,
    ...options,
  });
  return { client, clock, WS, fetch, ws: () => WS.instances.at(-1) };
}

test('after WebSocket fails twice, receives over SSE from since and publishes over HTTP', async () => {
  const { client, clock, WS, fetch, ws } = setup({ token: 'tok' });
  const got = [];
  client.subscribe('chat:a', (m) => got.push(m.offset), { since: '5-0' });
  client.subscribe('chat:b', () => {});
  client.connect();
  ws().serverRefuse();
  clock.advance(0);
  assert.equal(WS.instances.length, 2);
  fetch.next.push({ stream: true });
  ws().serverRefuse();
  await flush();
  assert.equal(fetch.requests.length, 1);
  const { url, init } = fetch.requests[0];
  assert.equal(url.origin + url.pathname, 'https://chat.test/prefix/sse');
  assert.deepEqual(url.searchParams.getAll('channel'), ['chat:a', 'chat:b']);
  assert.equal(url.searchParams.get('since'), '5-0');
  assert.equal(init.headers.Authorization, 'Bearer tok');
  assert.equal(client.state, 'open');
  assert.equal(client.transport, 'sse');
  fetch.streams[0].event({ type: 'message', channel: 'chat:a', offset: '5-0', data: 1 });
  fetch.streams[0].event({ type: 'message', channel: 'chat:a', offset: '6-0', data: 2 });
  await flush();
  assert.deepEqual(got, ['6-0'], 'an offset at or below since is not shown');

  fetch.next.push({ status: 200, json: { offset: '7-0' } });
  assert.deepEqual(await client.publish('chat:a', { text: 'hi' }), { offset: '7-0' });
  const post = fetch.requests[1];
  assert.equal(post.url.pathname, '/prefix/api/publish');
  assert.equal(post.init.method, 'POST');
  assert.deepEqual(JSON.parse(post.init.body), { channel: 'chat:a', data: { text: 'hi' } });

  fetch.next.push({ status: 503, json: { code: 'unavailable', message: 'redis down' } });
  await assert.rejects(client.publish('chat:a', 1), { code: 'unavailable' });
});

test('SSE stream ends: back to WebSocket first, resuming from the last offset', async () => {
  const { client, clock, WS, fetch, ws } = setup();
  client.subscribe('chat:a', () => {});
  client.connect();
  await refuseWebSocketsTwiceThenStream({ clock, fetch, ws });
  fetch.streams[0].event({ type: 'message', channel: 'chat:a', offset: '8-0', data: 1 });
  await flush();
  fetch.streams[0].end();
  await flush();
  assert.equal(client.state, 'reconnecting');
  clock.advance(0);
  assert.equal(WS.instances.length, 3);
  ws().serverOpen();
  assert.equal(client.transport, 'websocket');
  assert.equal(ws().sentOfType('subscribe')[0].since, '8-0');
});

test('SSE ended by a close event with 1008 (token expired): the app is asked for a fresh token', async () => {
  const reasons = [];
  const { client, clock, WS, fetch, ws } = setup({
    token: 'expiring',
    getToken: (reason) => {
      reasons.push(reason);
      return 'fresh';
    },
  });
  client.subscribe('chat:a', () => {});
  client.connect();
  await refuseWebSocketsTwiceThenStream({ clock, fetch, ws });
  assert.equal(client.transport, 'sse');
  fetch.streams[0].close({ code: 1008, reason: 'token_expired' });
  fetch.streams[0].end();
  await flush();
  assert.deepEqual(reasons, ['SSE closed with 1008']);
  clock.advance(0);
  assert.equal(WS.instances.length, 3, 'back to WebSocket with the fresh token');
  assert.deepEqual(ws().protocols, ['chat.v1', 'bearer.fresh']);
});

test('SSE answering 401: the app is asked for a fresh token', async () => {
  let asked = 0;
  const { client, clock, WS, fetch, ws } = setup({
    token: 'expired',
    getToken: () => {
      asked++;
      return 'fresh';
    },
  });
  client.subscribe('chat:a', () => {});
  client.connect();
  ws().serverRefuse();
  clock.advance(0);
  fetch.next.push({ status: 401 });
  ws().serverRefuse();
  await flush();
  assert.equal(asked, 1);
  clock.advance(0);
  assert.equal(WS.instances.length, 3);
  assert.equal(ws().url, 'wss://chat.test/prefix/ws');
  assert.deepEqual(ws().protocols, ['chat.v1', 'bearer.fresh']);
});

test('sse: false never calls fetch', async () => {
  const { client, clock, fetch, ws } = setup({ sse: false });
  client.subscribe('chat:a', () => {});
  client.connect();
  for (let i = 0; i < 4; i++) {
    ws().serverRefuse();
    clock.advance(10_000);
  }
  await flush();
  assert.equal(fetch.requests.length, 0);
});

test('subscribing while on SSE reopens the stream with the new channel set', async () => {
  const { client, clock, fetch, ws } = setup();
  client.subscribe('chat:a', () => {}, { since: '3-0' });
  client.connect();
  await refuseWebSocketsTwiceThenStream({ clock, fetch, ws });
  assert.equal(client.transport, 'sse');
  fetch.next.push({ stream: true });
  const b = client.subscribe('chat:b', () => {});
  await flush();
  assert.equal(fetch.requests.length, 2);
  assert.deepEqual(fetch.requests[1].url.searchParams.getAll('channel'), ['chat:a', 'chat:b']);
  assert.equal(fetch.requests[1].url.searchParams.get('since'), '3-0');
  assert.ok(fetch.requests[0].init.signal.aborted, 'the old stream is closed');
  await b.ready;
});

test('SSE: `subscribed` events carry epochs, which the next stream sends back with since', async () => {
  const { client, clock, fetch, ws } = setup({ sseAfterFailures: 1 });
  const gaps = [];
  client.on('gap', (g) => gaps.push(g.channel));
  client.subscribe('chat:a', () => {}, { since: '5-0' });
  client.subscribe('chat:b', () => {});
  client.connect();
  fetch.next.push({ stream: true });
  ws().serverRefuse();
  await flush();
  assert.deepEqual(fetch.requests[0].url.searchParams.getAll('epoch'), [], 'no epoch known yet');
  fetch.streams[0].subscribed({ channel: 'chat:a', offset: '9-0', recovered: 4, epoch: 'ea' });
  fetch.streams[0].subscribed({ channel: 'chat:b', offset: '3-0', recovered: 0, gap: true, epoch: 'eb' });
  await flush();
  assert.deepEqual([client.epoch('chat:a'), client.epoch('chat:b')], ['ea', 'eb']);
  assert.deepEqual(gaps, ['chat:b']);
  fetch.streams[0].event({ type: 'message', channel: 'chat:a', offset: '6-0', data: 1 });
  await flush();
  fetch.next.push({ stream: true });
  fetch.streams[0].end();
  await flush();
  clock.advance(0);
  ws().serverRefuse();
  await flush();
  const { url } = fetch.requests.at(-1);
  assert.equal(url.searchParams.get('since'), '3-0');
  assert.deepEqual(url.searchParams.getAll('epoch').sort(), ['ea', 'eb']);
});

test('channels with a subscription token are left out of the SSE fallback (they wait for WebSocket)', async () => {
  const { client, clock, fetch, ws } = setup();
  client.subscribe('secret:a', () => {}, { token: 'tok', since: '1-0' });
  client.subscribe('chat:a', () => {}, { since: '5-0' });
  client.connect();
  await refuseWebSocketsTwiceThenStream({ clock, fetch, ws });
  const { url } = fetch.requests[0];
  assert.deepEqual(url.searchParams.getAll('channel'), ['chat:a']);
  assert.equal(url.searchParams.get('since'), '5-0', 'the left-out channel does not pull since back');
});

test('SSE: `join` and `leave` events reach the listeners like the WebSocket frames', async () => {
  const { client, fetch, ws } = setup({ sseAfterFailures: 1 });
  const seen = [];
  client.on('join', (j) => seen.push(['join', j.channel, j.info.user]));
  client.on('leave', (l) => seen.push(['leave', l.channel, l.info.user]));
  client.subscribe('chat:a', () => {});
  client.connect();
  fetch.next.push({ stream: true });
  ws().serverRefuse();
  await flush();
  fetch.streams[0].subscribed({ channel: 'chat:a', offset: '1-0', recovered: 0, epoch: 'e' });
  fetch.streams[0].typed({ type: 'join', channel: 'chat:a', info: { client: 'c1', user: 'bob' } });
  fetch.streams[0].typed({ type: 'leave', channel: 'chat:a', info: { client: 'c1', user: 'bob' } });
  fetch.streams[0].typed({ type: 'join', channel: 'chat:other', info: { client: 'c2', user: 'eve' } });
  await flush();
  assert.deepEqual(seen, [['join', 'chat:a', 'bob'], ['leave', 'chat:a', 'bob']], 'not for channels it left');
});

test('on SSE, a WebSocket probe every upgradeInterval: one that gets through moves the client back to WebSocket', async () => {
  // heartbeat 0: no stall check of the stream across the minutes the test skips
  const { client, clock, WS, fetch, ws } = setup({ upgradeInterval: 60000, connectTimeout: 1000, heartbeat: 0 });
  const got = [];
  client.subscribe('chat:a', (m) => got.push(m.offset));
  client.connect();
  await refuseWebSocketsTwiceThenStream({ clock, fetch, ws });
  assert.equal(client.transport, 'sse');
  fetch.streams[0].event({ type: 'message', channel: 'chat:a', offset: '8-0', data: 1 });
  await flush();

  // The first probe fails (WebSockets still blocked): nothing changes, the stream goes on.
  clock.advance(60000);
  assert.equal(WS.instances.length, 3, 'a probe');
  ws().serverRefuse();
  assert.equal(client.transport, 'sse');
  assert.equal(client.state, 'open');
  fetch.streams[0].event({ type: 'message', channel: 'chat:a', offset: '9-0', data: 2 });
  await flush();
  assert.deepEqual(got, ['8-0', '9-0']);
  // A probe that opens but never passes a frame fails at connectTimeout.
  clock.advance(60000);
  assert.equal(WS.instances.length, 4);
  const silent = ws();
  silent.serverOpen(null);
  clock.advance(1000);
  assert.equal(silent.closedByClient, 1000, 'the silent probe is closed');
  assert.equal(client.transport, 'sse');

  // The next one gets its welcome: the stream is aborted and a fresh WebSocket resumes from
  // the last offset.
  clock.advance(60000);
  assert.equal(WS.instances.length, 5);
  const probe = ws();
  probe.serverOpen();
  assert.equal(probe.closedByClient, 1000, 'the probe itself is closed');
  assert.equal(WS.instances.length, 6, 'a fresh WebSocket');
  ws().serverOpen();
  assert.equal(client.transport, 'websocket');
  assert.equal(client.state, 'open');
  assert.equal(ws().sentOfType('subscribe')[0].since, '9-0');
  await flush();
  // The old stream is gone: an event on it is not delivered.
  assert.equal(fetch.requests.length, 1);
  assert.throws(() => fetch.streams[0].event({ type: 'message', channel: 'chat:a', offset: '10-0', data: 3 }));
  await flush();
  assert.deepEqual(got, ['8-0', '9-0']);
  // No more probes once on WebSocket.
  clock.advance(120000);
  assert.equal(WS.instances.length, 6);
});

test('upgradeInterval 0: no WebSocket probes while on SSE', async () => {
  const { client, clock, WS, fetch, ws } = setup({ upgradeInterval: 0, heartbeat: 0 });
  client.subscribe('chat:a', () => {});
  client.connect();
  await refuseWebSocketsTwiceThenStream({ clock, fetch, ws });
  assert.equal(client.transport, 'sse');
  clock.advance(600000);
  assert.equal(WS.instances.length, 2);
});
