import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChatClient } from '../src/index.js';
import { FakeClock, fakeWebSocketClass, sequence, message, flush } from './fakes.js';

function setup(options = {}) {
  const clock = new FakeClock();
  const WS = fakeWebSocketClass();
  const states = [];
  const client = new ChatClient({
    url: 'ws://chat.test/ws',
    WebSocket: WS,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    random: () => 0.5,
    fetch: async () => {
      throw new Error('no network in this test');
    },
    reconnect: { initialDelay: 100, maxDelay: 1000, factor: 2, maxAttempts: 5 },
    ...options,
  });
  client.on('state', (s) => states.push(s));
  const ws = () => WS.instances.at(-1);
  return { client, clock, WS, ws, states };
}

test('connects with the token in Sec-WebSocket-Protocol, never in the URL', () => {
  const { client, ws, states } = setup({ token: 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.c2ln' });
  client.connect();
  // URLs end up in proxy and Ingress access logs; the subprotocol header does not.
  assert.equal(ws().url, 'ws://chat.test/ws');
  assert.ok(!ws().url.includes('token'));
  assert.deepEqual(ws().protocols, ['chat.v1', 'bearer.eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.c2ln']);
  assert.equal(client.state, 'connecting');
  ws().serverOpen({ node: 'chat-7' });
  assert.equal(client.state, 'open');
  assert.equal(client.node, 'chat-7');
  assert.equal(client.transport, 'websocket');
  assert.deepEqual(states.map((s) => s.state), ['connecting', 'open', 'open']);
});

test('publish resolves with the ack matching its ref; errors reject only their own publish', async () => {
  const { client, ws } = setup();
  client.connect();
  ws().serverOpen();
  const p1 = client.publish('chat:a', { text: 'one' });
  const p2 = client.publish('chat:a', { text: 'two' });
  const [f1, f2] = ws().sentOfType('publish');
  assert.notEqual(f1.ref, f2.ref);
  assert.deepEqual(f1.data, { text: 'one' });
  ws().serverSend({ type: 'error', code: 'rate_limited', message: 'slow down', ref: f2.ref });
  ws().serverSend({ type: 'ack', ref: f1.ref, offset: '10-0' });
  assert.deepEqual(await p1, { offset: '10-0' });
  await assert.rejects(p2, { code: 'rate_limited' });
  assert.equal(client.state, 'open');
});

test('publish times out when no ack comes', async () => {
  const { client, ws, clock } = setup({ publishTimeout: 3000 });
  client.connect();
  ws().serverOpen();
  const p = client.publish('chat:a', 1);
  clock.advance(3000);
  await assert.rejects(p, { code: 'timeout' });
});

test('subscribe: ready on `subscribed`, forbidden rejects, unsubscribe sends unsubscribe', async () => {
  const { client, ws } = setup();
  const got = [];
  const sub = client.subscribe('chat:a', (m) => got.push(m.data.text));
  const bad = client.subscribe('secret:x', () => {});
  client.connect();
  ws().serverOpen();
  const [sa, sb] = ws().sentOfType('subscribe');
  assert.equal(sa.channel, 'chat:a');
  assert.equal(sa.since, undefined, 'first subscription asks for live messages only');
  ws().serverSend({ type: 'subscribed', channel: 'chat:a', offset: '5-0', recovered: 0 });
  ws().serverSend({ type: 'error', code: 'forbidden', message: 'no', ref: sb.ref });
  await sub.ready;
  await assert.rejects(bad.ready, { code: 'forbidden' });
  ws().serverSend(message('chat:a', '6-0', { text: 'hi' }));
  ws().serverSend(message('secret:x', '6-0', { text: 'leak' }));
  assert.deepEqual(got, ['hi']);
  sub.unsubscribe();
  assert.deepEqual(ws().sent.at(-1), { type: 'unsubscribe', channel: 'chat:a' });
  ws().serverSend(message('chat:a', '7-0', { text: 'late' }));
  assert.deepEqual(got, ['hi']);
});

test('reconnect uses exponential backoff with full jitter, a cap and a maximum number of attempts', () => {
  const { client, ws, clock, WS, states } = setup({ random: () => 0.999, sse: false });
  client.connect();
  ws().serverOpen();
  ws().serverClose(1006);
  const delays = [];
  for (let i = 0; i < 5; i++) {
    const s = states.at(-1);
    assert.equal(s.state, 'reconnecting');
    delays.push(s.delay);
    const before = WS.instances.length;
    clock.advance(s.delay - 1);
    assert.equal(WS.instances.length, before, 'no attempt before the delay');
    clock.advance(1);
    assert.equal(WS.instances.length, before + 1);
    ws().serverRefuse();
  }
  assert.deepEqual(delays, [99, 199, 399, 799, 999]);
  assert.equal(client.state, 'failed');
  assert.equal(WS.instances.length, 6);
  clock.advance(60_000);
  assert.equal(WS.instances.length, 6, 'no attempt after giving up');
  // the app can try again
  client.connect();
  assert.equal(WS.instances.length, 7);
});

test('a successful connection resets the attempt counter', () => {
  const { client, ws, clock, states } = setup({ random: () => 0.999 });
  client.connect();
  ws().serverOpen();
  ws().serverClose(1006);
  clock.advance(states.at(-1).delay);
  ws().serverRefuse();
  assert.equal(states.at(-1).delay, 199);
  clock.advance(199);
  ws().serverOpen();
  ws().serverClose(1011);
  assert.equal(states.at(-1).delay, 99);
});

test('resubscribes with since = last offset seen and shows recovered messages exactly once', async () => {
  const { client, ws, clock } = setup({ random: () => 0 });
  const got = [];
  client.subscribe('chat:a', (m) => got.push(m.offset));
  client.subscribe('chat:b', () => {});
  client.connect();
  ws().serverOpen();
  ws().acceptSubscribes({ 'chat:a': '10-0', 'chat:b': '3-0' });
  ws().serverSend(message('chat:a', '11-0'));
  ws().serverSend(message('chat:a', '12-0'));
  ws().serverClose(1006);
  clock.advance(0);
  ws().serverOpen({ node: 'chat-1' });
  const subs = ws().sentOfType('subscribe');
  assert.deepEqual(
    subs.map((f) => [f.channel, f.since]),
    [
      ['chat:a', '12-0'],
      ['chat:b', '3-0'],
    ],
  );
  ws().serverSend({ type: 'subscribed', channel: 'chat:a', offset: '14-0', recovered: 3 });
  // a server (or a race) replaying one message too many must not show it twice
  for (const o of ['12-0', '13-0', '13-1', '14-0']) ws().serverSend(message('chat:a', o));
  ws().serverSend(message('chat:a', '13-1'));
  assert.deepEqual(got, ['11-0', '12-0', '13-0', '13-1', '14-0']);
  assert.equal(client.lastOffset('chat:a'), '14-0');
});

test('close 1001 (draining): reconnects after a random delay within drainDelay, then recovers', () => {
  const { client, ws, clock, WS, states } = setup({ drainDelay: 2000, random: sequence(0.25) });
  client.subscribe('chat:a', () => {});
  client.connect();
  ws().serverOpen({ node: 'chat-0' });
  ws().acceptSubscribes({ 'chat:a': '1-0' });
  ws().serverClose(1001);
  assert.equal(states.at(-1).state, 'reconnecting');
  assert.equal(states.at(-1).code, 1001);
  assert.equal(states.at(-1).delay, 500);
  clock.advance(499);
  assert.equal(WS.instances.length, 1);
  clock.advance(1);
  assert.equal(WS.instances.length, 2);
  ws().serverOpen({ node: 'chat-1' });
  assert.equal(client.node, 'chat-1');
  assert.equal(ws().sentOfType('subscribe')[0].since, '1-0');
});

test('close 4001 (slow consumer): reconnects at once with since', () => {
  const { client, ws, clock, WS } = setup({ random: () => 0.9 });
  client.subscribe('chat:a', () => {});
  client.connect();
  ws().serverOpen();
  ws().acceptSubscribes({ 'chat:a': '1-0' });
  ws().serverSend(message('chat:a', '2-0'));
  ws().serverClose(4001);
  clock.advance(0);
  assert.equal(WS.instances.length, 2);
  ws().serverOpen();
  assert.equal(ws().sentOfType('subscribe')[0].since, '2-0');
});

test('close 1008: asks the app for a fresh token and reconnects with it', async () => {
  const reasons = [];
  const { client, ws, clock, WS } = setup({
    token: 'old',
    getToken: async (reason) => {
      reasons.push(reason);
      return 'new';
    },
  });
  client.connect();
  ws().serverOpen();
  ws().serverClose(1008);
  await flush();
  clock.advance(0);
  assert.equal(WS.instances.length, 2);
  assert.equal(ws().url, 'ws://chat.test/ws');
  assert.deepEqual(ws().protocols, ['chat.v1', 'bearer.new']);
  assert.equal(reasons.length, 1);
});

test('without a token only chat.v1 is offered', () => {
  const { client, ws } = setup();
  client.connect();
  assert.deepEqual(ws().protocols, ['chat.v1']);
});

test('close 1008 without getToken, or getToken giving nothing: failed, no retry loop', async () => {
  const a = setup({ token: 'old' });
  a.client.connect();
  a.ws().serverOpen();
  a.ws().serverClose(1008);
  assert.equal(a.client.state, 'failed');
  const b = setup({ token: 'old', getToken: async () => null });
  b.client.connect();
  b.ws().serverOpen();
  b.ws().serverClose(1008);
  await flush();
  assert.equal(b.client.state, 'failed');
  b.clock.advance(60_000);
  assert.equal(b.WS.instances.length, 1);
});

test('a publish sent before a drop is rejected; one queued while reconnecting goes out once', async () => {
  const { client, ws, clock } = setup({ random: () => 0 });
  client.connect();
  ws().serverOpen();
  const inFlight = client.publish('chat:a', 'x');
  ws().serverClose(1006);
  await assert.rejects(inFlight, { code: 'connection_lost' });
  const queued = client.publish('chat:a', 'y');
  clock.advance(0);
  ws().serverOpen();
  const [f] = ws().sentOfType('publish');
  assert.equal(f.data, 'y');
  ws().serverSend({ type: 'ack', ref: f.ref, offset: '9-0' });
  assert.deepEqual(await queued, { offset: '9-0' });
});

test('close() stops reconnecting and rejects what is pending', async () => {
  const { client, ws, clock, WS } = setup();
  client.connect();
  ws().serverOpen();
  const p = client.publish('chat:a', 1);
  client.close();
  assert.equal(ws().closedByClient, 1000);
  await assert.rejects(p, { code: 'closed' });
  assert.equal(client.state, 'closed');
  clock.advance(60_000);
  assert.equal(WS.instances.length, 1);
  await assert.rejects(client.publish('chat:a', 1), { code: 'not_connected' });
});

test('a bad frame from the server is reported, the connection stays', () => {
  const { client, ws } = setup();
  const errors = [];
  client.on('error', (e) => errors.push(e.code));
  client.connect();
  ws().serverOpen();
  ws().serverSend('not json');
  assert.deepEqual(errors, ['bad_json']);
  assert.equal(client.state, 'open');
});

test('gap: the since offset was trimmed; the app is told', () => {
  const { client, ws, clock } = setup({ random: () => 0 });
  const gaps = [];
  client.on('gap', (g) => gaps.push(g.channel));
  client.subscribe('chat:a', () => {});
  client.connect();
  ws().serverOpen();
  ws().acceptSubscribes({ 'chat:a': '1-0' });
  ws().serverClose(1006);
  clock.advance(0);
  ws().serverOpen();
  ws().serverSend({ type: 'subscribed', channel: 'chat:a', offset: '90-0', recovered: 0, gap: true });
  assert.deepEqual(gaps, ['chat:a']);
});

test('epoch: resubscribes send the epoch back; a new epoch resets the offset so its messages are not dropped', () => {
  const { client, ws, clock } = setup({ random: () => 0 });
  const gaps = [];
  const got = [];
  client.on('gap', (g) => gaps.push(g));
  client.subscribe('chat:a', (m) => got.push(m.offset));
  client.connect();
  ws().serverOpen();
  const [first] = ws().sentOfType('subscribe');
  assert.equal(first.epoch, undefined, 'no offset yet, no epoch');
  ws().serverSend({ type: 'subscribed', channel: 'chat:a', offset: '100-0', recovered: 0, epoch: 'e1' });
  assert.equal(client.epoch('chat:a'), 'e1');
  ws().serverSend(message('chat:a', '101-0'));
  ws().serverClose(1006);
  clock.advance(0);
  ws().serverOpen();
  const [again] = ws().sentOfType('subscribe');
  assert.deepEqual([again.since, again.epoch], ['101-0', 'e1']);
  // The history was lost: a new epoch whose offsets are below the old ones.
  ws().serverSend({ type: 'subscribed', channel: 'chat:a', offset: '5-0', recovered: 0, gap: true, epoch: 'e2' });
  assert.deepEqual(gaps, [{ channel: 'chat:a', epoch: 'e2', offset: '5-0', epochChanged: true }]);
  assert.equal(client.epoch('chat:a'), 'e2');
  ws().serverSend(message('chat:a', '6-0'));
  assert.deepEqual(got, ['101-0', '6-0']);
  assert.equal(client.lastOffset('chat:a'), '6-0');
});

test('epoch: a subscribe with since and epoch from the app sends both', () => {
  const { client, ws } = setup();
  client.subscribe('chat:a', () => {}, { since: '7-0', epoch: 'e9' });
  client.connect();
  ws().serverOpen();
  const [f] = ws().sentOfType('subscribe');
  assert.deepEqual([f.since, f.epoch], ['7-0', 'e9']);
});

test('history() over the WebSocket: a history frame with a ref, answered by its page; errors reject', async () => {
  const { client, ws } = setup();
  client.connect();
  ws().serverOpen();
  const page = client.history('chat:a', { limit: 50, before: '9-0', reverse: true });
  const [f] = ws().sentOfType('history');
  assert.deepEqual({ ...f, ref: undefined }, { type: 'history', channel: 'chat:a', limit: 50, before: '9-0', reverse: true, ref: undefined });
  const refused = client.history('secret:x');
  const [, g] = ws().sentOfType('history');
  ws().serverSend({ type: 'error', code: 'forbidden', message: 'no', ref: g.ref });
  ws().serverSend({ type: 'history', channel: 'chat:a', ref: f.ref, messages: [message('chat:a', '8-0')], offset: '12-0', epoch: 'e1' });
  assert.deepEqual(await page, { channel: 'chat:a', messages: [message('chat:a', '8-0')], offset: '12-0', epoch: 'e1' });
  await assert.rejects(refused, { code: 'forbidden' });
  // In flight when the connection drops: rejected, never answered twice.
  const lost = client.history('chat:a');
  ws().serverClose(1006);
  await assert.rejects(lost, { code: 'connection_lost' });
});

test('history() without a WebSocket: GET /api/history with the token in a header', async () => {
  const requests = [];
  const { client } = setup({
    token: 'tok',
    fetch: async (url, init) => {
      requests.push({ url: new URL(url), init });
      return { status: 200, ok: true, json: async () => ({ channel: 'chat:a', messages: [], offset: '0-0', epoch: 'e' }) };
    },
  });
  const page = await client.history('chat:a', { limit: 20, since: '3-0' });
  assert.equal(page.epoch, 'e');
  const { url, init } = requests[0];
  assert.equal(url.pathname, '/api/history');
  assert.deepEqual(Object.fromEntries(url.searchParams), { channel: 'chat:a', limit: '20', since: '3-0' });
  assert.equal(init.headers.Authorization, 'Bearer tok');
});

test('subscribe with last: asked on the first subscribe only, resubscribes resume with since', () => {
  const { client, ws, clock } = setup({ random: () => 0 });
  const got = [];
  client.subscribe('chat:a', (m) => got.push(m.offset), { last: 50 });
  client.connect();
  ws().serverOpen();
  const [first] = ws().sentOfType('subscribe');
  assert.equal(first.last, 50);
  ws().serverSend({ type: 'subscribed', channel: 'chat:a', offset: '20-0', recovered: 2, epoch: 'e1' });
  ws().serverSend(message('chat:a', '19-0'));
  ws().serverSend(message('chat:a', '20-0'));
  assert.deepEqual(got, ['19-0', '20-0'], 'the recovered newest messages are delivered');
  ws().serverClose(1006);
  clock.advance(0);
  ws().serverOpen();
  const [again] = ws().sentOfType('subscribe');
  assert.deepEqual([again.last, again.since, again.epoch], [undefined, '20-0', 'e1']);
});

test('presence() and presenceStats(): request frames with a ref, answered by their frames; errors reject', async () => {
  const { client, ws } = setup();
  await assert.rejects(client.presence('chat:a'), { code: 'not_connected' });
  client.connect();
  ws().serverOpen();
  const who = client.presence('chat:a');
  const stats = client.presenceStats('chat:a');
  const refused = client.presence('typing:a');
  const [p, off] = ws().sentOfType('presence');
  const [s] = ws().sentOfType('presence_stats');
  assert.deepEqual({ ...p, ref: undefined }, { type: 'presence', channel: 'chat:a', ref: undefined });
  assert.deepEqual({ ...s, ref: undefined }, { type: 'presence_stats', channel: 'chat:a', ref: undefined });
  assert.equal(new Set([p.ref, s.ref, off.ref]).size, 3, 'each request has its own ref');
  ws().serverSend({ type: 'error', code: 'not_available', message: 'off', ref: off.ref });
  ws().serverSend({ type: 'presence_stats', channel: 'chat:a', ref: s.ref, clients: 3, users: 2 });
  const clients = [{ client: 'c1', user: 'ann', conn_info: { name: 'Ann' } }];
  ws().serverSend({ type: 'presence', channel: 'chat:a', ref: p.ref, clients, total: 4, truncated: true });
  assert.deepEqual(await who, { channel: 'chat:a', clients, total: 4, truncated: true });
  assert.deepEqual(await stats, { channel: 'chat:a', clients: 3, users: 2 });
  await assert.rejects(refused, { code: 'not_available' });
  // In flight when the connection drops: rejected.
  const lost = client.presenceStats('chat:a');
  ws().serverClose(1006);
  await assert.rejects(lost, { code: 'connection_lost' });
});

test('join and leave frames of subscribed channels become join/leave events', () => {
  const { client, ws } = setup();
  const seen = [];
  client.on('join', (e) => seen.push(['join', e]));
  client.on('leave', (e) => seen.push(['leave', e]));
  const got = [];
  client.subscribe('chat:a', (m) => got.push(m));
  client.connect();
  ws().serverOpen();
  ws().serverSend({ type: 'subscribed', channel: 'chat:a', offset: '0-0', recovered: 0, epoch: 'e1' });
  const info = { client: 'c2', user: 'bob' };
  ws().serverSend({ type: 'join', channel: 'chat:a', info });
  ws().serverSend({ type: 'leave', channel: 'chat:a', info });
  ws().serverSend({ type: 'join', channel: 'chat:other', info });
  assert.deepEqual(seen, [
    ['join', { channel: 'chat:a', info }],
    ['leave', { channel: 'chat:a', info }],
  ]);
  assert.deepEqual(got, [], 'join/leave are not messages');
  assert.equal(client.lastOffset('chat:a'), '0-0', 'and move no offset');
});

test('subscription tokens: a string is sent as is; a function is asked again on every resubscribe', async () => {
  const { client, ws, clock, states } = setup({ sse: false });
  const asked = [];
  let n = 0;
  const fresh = async (channel) => {
    asked.push(channel);
    return `tok-${++n}`;
  };
  const fixed = client.subscribe('secret:a', () => {}, { token: 'tok-fixed' });
  const sub = client.subscribe('secret:b', () => {}, { token: fresh });
  const plain = client.subscribe('chat:a', () => {});
  client.connect();
  ws().serverOpen();
  await flush();
  const frames = () => Object.fromEntries(ws().sentOfType('subscribe').map((f) => [f.channel, f]));
  assert.equal(frames()['secret:a'].token, 'tok-fixed');
  assert.equal(frames()['secret:b'].token, 'tok-1');
  assert.equal(frames()['chat:a'].token, undefined, 'no token where none was given');
  for (const channel of ['secret:a', 'secret:b', 'chat:a']) {
    ws().serverSend({ type: 'subscribed', channel, offset: '1-0', recovered: 0 });
  }
  await Promise.all([fixed.ready, sub.ready, plain.ready]);
  // The connection drops: the resubscribe asks the function for a fresh token.
  ws().serverClose(1006);
  clock.advance(states.at(-1).delay);
  ws().serverOpen();
  await flush();
  assert.equal(frames()['secret:b'].token, 'tok-2');
  assert.equal(frames()['secret:b'].since, '1-0');
  assert.equal(frames()['secret:a'].token, 'tok-fixed');
  assert.deepEqual(asked, ['secret:b', 'secret:b']);
});

test('subscription tokens: a refused one rejects `ready` with the server reason; a failing callback rejects with token_failed', async () => {
  const { client, ws } = setup({ sse: false });
  const refused = client.subscribe('secret:a', () => {}, { token: 'expired' });
  const broken = client.subscribe('secret:b', () => {}, {
    token: async () => {
      throw new Error('backend down');
    },
  });
  const errors = [];
  client.on('error', (e) => errors.push(e.code));
  client.connect();
  ws().serverOpen();
  await flush();
  const [sent] = ws().sentOfType('subscribe');
  assert.equal(sent.channel, 'secret:a', 'nothing sent for the failed callback');
  assert.equal(ws().sentOfType('subscribe').length, 1);
  ws().serverSend({ type: 'error', code: 'forbidden', message: 'subscription token expired', ref: sent.ref });
  await assert.rejects(refused.ready, { code: 'forbidden', message: 'subscription token expired' });
  await assert.rejects(broken.ready, { code: 'token_failed' });
  assert.deepEqual(errors.sort(), ['forbidden', 'token_failed']);
});
