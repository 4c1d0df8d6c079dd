// Deterministic stand-ins for the browser's WebSocket, timers, randomness and fetch, so the
// reconnect and recovery logic can be driven step by step.

/** A manual clock: timers run only when the test advances time. */
export class FakeClock {
  now = 0;
  #seq = 0;
  #timers = new Map();
  setTimeout = (fn, ms) => {
    const id = ++this.#seq;
    this.#timers.set(id, { at: this.now + Math.max(0, ms ?? 0), fn });
    return id;
  };
  clearTimeout = (id) => {
    this.#timers.delete(id);
  };
  /** delays of the timers still pending, relative to now */
  pending() {
    return [...this.#timers.values()].map((t) => t.at - this.now).sort((a, b) => a - b);
  }
  /** advances time by `ms`, running due timers in order */
  advance(ms) {
    const end = this.now + ms;
    for (;;) {
      let next = null;
      for (const [id, t] of this.#timers) if (t.at <= end && (!next || t.at < next[1].at)) next = [id, t];
      if (!next) break;
      this.#timers.delete(next[0]);
      this.now = next[1].at;
      next[1].fn();
    }
    this.now = end;
  }
}

/** random() returning the given values in turn (then the last one forever). */
export function sequence(...values) {
  let i = 0;
  return () => values[Math.min(i++, values.length - 1)];
}

/** A WebSocket class whose instances the test plays the server for. */
export function fakeWebSocketClass() {
  const instances = [];
  class FakeWebSocket {
    static instances = instances;
    readyState = 0;
    sent = [];
    onopen = null;
    onmessage = null;
    onerror = null;
    onclose = null;
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      instances.push(this);
    }
    send(text) {
      if (this.readyState !== 1) throw new Error('send on a socket that is not open');
      this.sent.push(JSON.parse(text));
    }
    close(code = 1000) {
      if (this.readyState === 3) return;
      this.readyState = 3;
      this.closedByClient = code;
    }
    // ---- the server's side ----
    serverOpen(welcome = { node: 'chat-0' }) {
      this.readyState = 1;
      this.onopen?.({});
      if (welcome) this.serverSend({ type: 'welcome', client: 'c1', heartbeat: 30, ...welcome });
    }
    serverSend(frame) {
      this.onmessage?.({ data: typeof frame === 'string' ? frame : JSON.stringify(frame) });
    }
    serverClose(code) {
      this.readyState = 3;
      this.onclose?.({ code, reason: '' });
    }
    /** the handshake fails (refused, HTTP error): browsers report close 1006 without open */
    serverRefuse() {
      this.serverClose(1006);
    }
    /** frames of a given type sent by the client */
    sentOfType(type) {
      return this.sent.filter((f) => f.type === type);
    }
    /** answers every pending subscribe like chat-node would (offset = newest in the channel) */
    acceptSubscribes(offsets = {}, from = 0) {
      for (const f of this.sentOfType('subscribe').slice(from)) {
        this.serverSend({ type: 'subscribed', channel: f.channel, offset: offsets[f.channel] ?? '0-0', recovered: 0 });
      }
    }
  }
  return FakeWebSocket;
}

/** A fetch() double that records requests and answers with scripted responses. */
export function fakeFetch() {
  const requests = [];
  const streams = [];
  const fn = async (url, init = {}) => {
    const req = { url: new URL(url), init };
    requests.push(req);
    const answer = fn.next.shift() ?? { status: 503 };
    if (answer.throw) throw new Error(answer.throw);
    if (answer.hang) {
      // never answers; rejects when aborted, as fetch does
      return new Promise((_, reject) => {
        init.signal?.addEventListener('abort', () => reject(new Error('aborted')));
      });
    }
    if (answer.stream) {
      let controller;
      const body = new ReadableStream({
        start(c) {
          controller = c;
        },
      });
      const enc = new TextEncoder();
      const handle = {
        event: (frame) => controller.enqueue(enc.encode(`event: message\nid: ${frame.offset}\ndata: ${JSON.stringify(frame)}\n\n`)),
        close: (data) => controller.enqueue(enc.encode(`event: close\ndata: ${JSON.stringify(data)}\n\n`)),
        subscribed: (frame) => controller.enqueue(enc.encode(`event: subscribed\ndata: ${JSON.stringify({ type: 'subscribed', ...frame })}\n\n`)),
        /** an event named after the frame's type (`join`, `leave`, `unsubscribed`) */
        typed: (frame) => controller.enqueue(enc.encode(`event: ${frame.type}\ndata: ${JSON.stringify(frame)}\n\n`)),
        /** a keep-alive comment, as chat-node sends when the stream is quiet */
        comment: () => controller.enqueue(enc.encode(':\n\n')),
        end: () => controller.close(),
      };
      init.signal?.addEventListener('abort', () => {
        try {
          controller.error(new Error('aborted'));
        } catch {
          // closed already
        }
      });
      streams.push(handle);
      return { status: 200, ok: true, body, json: async () => ({}) };
    }
    return {
      status: answer.status,
      ok: answer.status >= 200 && answer.status < 300,
      body: null,
      json: async () => answer.json ?? {},
    };
  };
  fn.next = [];
  fn.requests = requests;
  fn.streams = streams;
  return fn;
}

export function message(channel, offset, data = { text: offset }, from = 'u1') {
  return { type: 'message', channel, offset, from, ts: 1, data };
}

/** lets pending promise callbacks run */
export function flush() {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * Plays a network that refuses WebSockets: the client's first two handshakes fail (with
 * `sseAfterFailures: 2`), and the SSE request that follows gets a stream (`fetch.streams` has
 * it). `ws` returns the newest socket.
 */
export async function refuseWebSocketsTwiceThenStream({ clock, fetch, ws }) {
  ws().serverRefuse();
  clock.advance(0);
  fetch.next.push({ stream: true });
  ws().serverRefuse();
  await flush();
}
