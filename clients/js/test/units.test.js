import { test } from 'node:test';
import assert from 'node:assert/strict';
import { backoffDelay, DEFAULT_RECONNECT, compareOffsets, minOffset, SseParser, readEventStream } from '../src/index.js';

const policy = { initialDelay: 100, maxDelay: 1000, factor: 2 };

test('backoff ceiling doubles per attempt and stops at the cap', () => {
  const almostOne = () => 0.999999;
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5, 10].map((a) => backoffDelay(a, policy, almostOne)),
    [99, 199, 399, 799, 999, 999, 999],
  );
});

test('full jitter: the delay is random in [0, ceiling)', () => {
  assert.equal(backoffDelay(3, policy, () => 0), 0);
  assert.equal(backoffDelay(3, policy, () => 0.5), 400);
  assert.equal(backoffDelay(50, policy, () => 0.25), 250);
});

test('default policy has a cap and a maximum number of attempts', () => {
  assert.ok(DEFAULT_RECONNECT.maxDelay >= DEFAULT_RECONNECT.initialDelay);
  assert.ok(Number.isFinite(DEFAULT_RECONNECT.maxAttempts));
});

test('offsets compare by milliseconds then sequence, not as text', () => {
  assert.equal(compareOffsets('999-0', '1000-0'), -1);
  assert.equal(compareOffsets('1000-10', '1000-9'), 1);
  assert.equal(compareOffsets('1732752000123-0', '1732752000123-0'), 0);
  assert.equal(compareOffsets('9', '10'), -1); // plain numbers
  assert.equal(minOffset([null, '5-1', '5-0', undefined, '6-0']), '5-0');
  assert.equal(minOffset([null]), null);
});

test('SSE parser: ids, multi-line data, comments, CRLF split across chunks', () => {
  const events = [];
  const p = new SseParser((ev) => events.push(ev));
  p.push(': keep-alive\n\nevent: message\nid: 1-0\ndata: {"a":');
  p.push('1}\n\r');
  p.push('\ndata: line1\ndata: line2\n\nid: 2-0\nevent: other\ndata:x\n\n');
  assert.deepEqual(events, [
    { event: 'message', data: '{"a":1}', id: '1-0' },
    { event: 'message', data: 'line1\nline2', id: '1-0' },
    { event: 'other', data: 'x', id: '2-0' },
  ]);
});

test('readEventStream decodes a byte stream', async () => {
  const bytes = new TextEncoder().encode('id: 7-0\nevent: message\ndata: {"ü":1}\n\n');
  const body = new ReadableStream({
    start(c) {
      c.enqueue(bytes.slice(0, 30)); // splits the two-byte ü
      c.enqueue(bytes.slice(30));
      c.close();
    },
  });
  const events = [];
  await readEventStream(body, (ev) => events.push(ev));
  assert.deepEqual(events, [{ event: 'message', data: '{"ü":1}', id: '7-0' }]);
});
