// The long-polling fallback: WebSocket -> SSE -> long-polling when neither a WebSocket nor a
// stream gets through (a proxy that buffers whole responses), forcing a transport, per-channel
// cursors, gaps, channel changes while polling, and what a failed poll leads to.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChatClient } from '../src/index.js';
import { FakeClock, fakeWebSocketClass, fakeFetch, flush, refuseWebSocketsTwiceThenStream, message } from './fakes.js';

function setup(options = {}) {
  const clock = new FakeClock();
  const WS = fakeWebSocketClass();
  const fetch = fakeFetch();
  const errors = [];
  const client = new ChatClient({
    url: 'wss://chat.test/prefix/ws',
    WebSocket: WS,
    fetch,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    random: () => 0,
    connectTimeout: 1000,
    ...options,
  });
  client.on('error', (e) => errors.push(e.code));
  return { client, clock, WS, fetch, errors, ws: () => WS.instances.at(-1) };
}

const answer = (channels, messages = []) => ({ status: 200, json: { messages, channels } });

test('WebSocket refused twice, then an SSE stream that passes no byte: falls back to long-polling', async () => {
  const { client, clock, WS, fetch, errors, ws } = setup({ token: 'tok' });
  const got = [];
  client.subscribe('chat:a', (m) => got.push(m.offset), { since: '5-0' });
  client.subscribe('chat:b', () => {});
  client.connect();
  await refuseWebSocketsTwiceThenStream({ clock, fetch, ws });
  assert.equal(fetch.requests[0].url.pathname, '/prefix/sse');
  assert.equal(client.transport, 'sse');
  // A buffering proxy: the response head came, no byte of the stream follows.
  fetch.next.push(answer({ 'chat:a': { offset: '5-0', epoch: 'e1' }, 'chat:b': { offset: '9-0', epoch: 'e2' } }));
  fetch.next.push({ hang: true });
  clock.advance(1000);
  await flush();
  assert.ok(errors.includes('connect_timeout'), errors.join());
  assert.equal(WS.instances.length, 2, 'no WebSocket attempt in between');
  const first = fetch.requests[1];
  assert.equal(first.url.pathname, '/prefix/poll');
  assert.deepEqual(first.url.searchParams.getAll('channel'), ['chat:a@5-0', 'chat:b']);
  assert.equal(first.url.searchParams.get('wait'), '0ms', 'the first round answers at once');
  assert.equal(first.init.headers.Authorization, 'Bearer tok');
  await flush();
  assert.equal(client.state, 'open');
  assert.equal(client.transport, 'longpoll');
  assert.equal(client.epoch('chat:b'), 'e2');
  // The next round waits, each channel from its own cursor, with the epochs known.
  const second = fetch.requests[2];
  assert.deepEqual(second.url.searchParams.getAll('channel'), ['chat:a@5-0', 'chat:b@9-0']);
  assert.deepEqual(second.url.searchParams.getAll('epoch').sort(), ['e1', 'e2']);
  assert.equal(second.url.searchParams.get('wait'), '25000ms');
  // Publishing goes over HTTP.
  fetch.next.push({ status: 200, json: { offset: '10-0' } });
  assert.deepEqual(await client.publish('chat:a', 'hi'), { offset: '10-0' });
  assert.equal(fetch.requests[3].url.pathname, '/prefix/api/publish');
});

test('a forced transport: `transports: [longpoll]` polls at once and delivers each message once', async () => {
  const { client, fetch, WS } = setup({ transports: ['longpoll'] });
  const got = [];
  client.subscribe('room', (m) => got.push(m.data));
  fetch.next.push(answer({ room: { offset: '3-0', epoch: 'e' } }));
  fetch.next.push(answer({ room: { offset: '5-0', epoch: 'e' } }, [message('room', '4-0', 'x'), message('room', '5-0', 'y')]));
  // a duplicate (a retried round) is dropped by offset
  fetch.next.push(answer({ room: { offset: '6-0', epoch: 'e' } }, [message('room', '5-0', 'y'), message('room', '6-0', 'z')]));
  fetch.next.push({ hang: true });
  client.connect();
  for (let i = 0; i < 6; i++) await flush();
  assert.equal(WS.instances.length, 0, 'no WebSocket when it is not allowed');
  assert.deepEqual(got, ['x', 'y', 'z']);
  assert.equal(client.lastOffset('room'), '6-0');
  assert.deepEqual(
    fetch.requests.map((r) => r.url.searchParams.get('channel')),
    ['room', 'room@3-0', 'room@5-0', 'room@6-0'],
  );
});

test('a gap in a poll answer is reported and the channel continues from the new history', async () => {
  const { client, fetch } = setup({ transports: ['longpoll'] });
  const gaps = [];
  client.on('gap', (g) => gaps.push(g));
  client.subscribe('room', () => {}, { since: '90-0', epoch: 'old' });
  fetch.next.push({ status: 200, json: { messages: [], gap: true, channels: { room: { offset: '2-0', epoch: 'new', gap: true } } } });
  fetch.next.push({ hang: true });
  client.connect();
  for (let i = 0; i < 4; i++) await flush();
  assert.deepEqual(gaps, [{ channel: 'room', epoch: 'new', offset: '2-0', epochChanged: true }]);
  assert.equal(client.lastOffset('room'), '2-0', 'lower than the old offset, and still taken');
  assert.equal(fetch.requests[1].url.searchParams.get('channel'), 'room@2-0');
  assert.deepEqual(fetch.requests[1].url.searchParams.getAll('epoch'), ['new']);
});

test('subscribing while polling gives up the round in flight and polls the new channel set', async () => {
  const { client, fetch, errors } = setup({ transports: ['longpoll'] });
  client.subscribe('a', () => {});
  fetch.next.push(answer({ a: { offset: '1-0', epoch: 'e' } }));
  fetch.next.push({ hang: true });
  client.connect();
  for (let i = 0; i < 4; i++) await flush();
  assert.equal(fetch.requests.length, 2);
  fetch.next.push({ hang: true });
  client.subscribe('b', () => {});
  for (let i = 0; i < 4; i++) await flush();
  assert.equal(fetch.requests.length, 3);
  assert.deepEqual(fetch.requests[2].url.searchParams.getAll('channel'), ['a@1-0', 'b']);
  assert.equal(client.state, 'open');
  assert.deepEqual(errors, []);
  fetch.next.push({ hang: true });
  client.unsubscribe('b');
  for (let i = 0; i < 4; i++) await flush();
  assert.deepEqual(fetch.requests[3].url.searchParams.getAll('channel'), ['a@1-0']);
});

test('a failed poll ends the transport: backoff, then WebSocket first again; a 401 asks for a token', async () => {
  const { client, clock, WS, fetch, errors, ws } = setup({ getToken: async () => 'fresh' });
  client.subscribe('a', () => {});
  client.connect();
  await refuseWebSocketsTwiceThenStream({ clock, fetch, ws });
  fetch.next.push(answer({ a: { offset: '1-0', epoch: 'e' } }));
  fetch.next.push({ status: 503, json: { code: 'at_capacity', message: 'full' } });
  clock.advance(1000);
  for (let i = 0; i < 6; i++) await flush();
  assert.ok(errors.includes('at_capacity'), errors.join());
  assert.equal(client.state, 'reconnecting');
  assert.equal(client.transport, null);
  clock.advance(0); // random() = 0: no backoff delay
  assert.equal(WS.instances.length, 3, 'the next attempt is a WebSocket');
  // Still refused: the SSE stream failed before, so the fallback goes straight to polling.
  fetch.next.push({ status: 401, json: { code: 'unauthorized' } });
  ws().serverRefuse();
  for (let i = 0; i < 6; i++) await flush();
  const last = fetch.requests.at(-1);
  assert.equal(last.url.pathname, '/prefix/poll');
  assert.equal(last.url.searchParams.get('channel'), 'a@1-0');
  const before = WS.instances.length;
  for (let i = 0; i < 4; i++) await flush();
  clock.advance(0);
  assert.equal(WS.instances.length, before + 1, 'WebSocket again');
  assert.equal(WS.instances.at(-1).protocols[1], 'bearer.fresh', 'with the fresh token');
});

test('longPoll: false keeps SSE as the last fallback; sse: false alone means WebSocket only', async () => {
  const noPoll = setup({ longPoll: false });
  noPoll.client.subscribe('a', () => {});
  noPoll.client.connect();
  noPoll.ws().serverRefuse();
  noPoll.clock.advance(0);
  noPoll.fetch.next.push({ stream: true });
  noPoll.ws().serverRefuse();
  await flush();
  noPoll.clock.advance(1000);
  await flush();
  assert.equal(noPoll.fetch.requests.length, 1, 'the silent stream is not given up for polling');
  assert.equal(noPoll.client.transport, 'sse');

  const wsOnly = setup({ sse: false });
  wsOnly.client.subscribe('a', () => {});
  wsOnly.client.connect();
  for (let i = 0; i < 3; i++) {
    wsOnly.ws().serverRefuse();
    wsOnly.clock.advance(60_000);
    await flush();
  }
  assert.ok(wsOnly.fetch.requests.every((r) => r.url.pathname === '/prefix/ws'), 'only auth probes');
  assert.throws(() => new ChatClient({ url: 'ws://x/ws', transports: [] }), { code: 'bad_option' });
});

test('`last` while long-polling: the newest messages from GET /api/history, then polls right after them', async () => {
  const { client, fetch } = setup({ transports: ['longpoll'] });
  const got = [];
  client.subscribe('room', (m) => got.push(m.data), { last: 2 });
  fetch.next.push({ status: 200, json: { channel: 'room', messages: [message('room', '8-0', 'b'), message('room', '7-0', 'a')], offset: '8-0', epoch: 'e' } });
  fetch.next.push({ hang: true });
  client.connect();
  for (let i = 0; i < 6; i++) await flush();
  const history = fetch.requests[0].url;
  assert.equal(history.pathname, '/prefix/api/history');
  assert.deepEqual(Object.fromEntries(history.searchParams), { channel: 'room', limit: '2', reverse: 'true' });
  assert.deepEqual(got, ['a', 'b']);
  assert.equal(fetch.requests[1].url.searchParams.get('channel'), 'room@8-0');
  assert.equal(client.epoch('room'), 'e');
});

test('long-polling: a WebSocket probe that gets through ends the polling and resumes over WebSocket', async () => {
  const { client, clock, WS, fetch, ws } = setup({ transports: ['websocket', 'longpoll'], sseAfterFailures: 1, upgradeInterval: 30000 });
  client.subscribe('room', () => {});
  fetch.next.push(answer({ room: { offset: '3-0', epoch: 'e' } }));
  fetch.next.push({ hang: true });
  client.connect();
  ws().serverRefuse();
  for (let i = 0; i < 4; i++) await flush();
  assert.equal(client.transport, 'longpoll');
  assert.equal(fetch.requests.length, 2, 'the first round and the waiting one');
  clock.advance(30000);
  assert.equal(WS.instances.length, 2, 'a probe');
  ws().serverOpen();
  assert.equal(WS.instances.length, 3, 'a fresh WebSocket');
  ws().serverOpen();
  assert.equal(client.transport, 'websocket');
  assert.equal(ws().sentOfType('subscribe')[0].since, '3-0');
  await flush();
  assert.equal(fetch.requests.length, 2, 'the waiting poll was aborted, no new one');
});
