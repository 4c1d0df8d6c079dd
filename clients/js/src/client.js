// ChatClient: a dependency-free browser client for chat-node (WebSocket protocol v1).
//
// What it does for the app:
// - keeps one connection up: exponential backoff with full jitter, a cap and a maximum number
//   of attempts; close 1001 (node draining) -> reconnect after a short random delay; 4001 (slow
//   consumer) -> reconnect at once; 1008 / HTTP 401 -> ask the app for a fresh token;
// - notices a dead connection: a connect timeout (no `welcome` in time), and a liveness check
//   paced by the heartbeat interval the server announces in `welcome`: a `ping` frame each
//   interval, answered by `pong` (browsers cannot see WebSocket Ping frames); a connection that
//   stays silent through one whole interval after a ping is dead, so a half-open connection is
//   noticed within two intervals and recovered with `since`. The SSE stream's keep-alive
//   comments are watched the same way;
// - tells a refused token from a dead node after a failed handshake, which browsers do not
//   report: a plain GET of the WebSocket URL answers 401 for a refused token;
// - keeps subscriptions across reconnects: each channel remembers the offset of the last message
//   it delivered and resubscribes with `since`, and any message at or below that offset is
//   dropped, so nothing is lost (while history holds it) and nothing is shown twice;
// - falls back to Server-Sent Events for receiving (and HTTP POST for publishing) when WebSocket
//   cannot connect, e.g. behind a proxy that refuses upgrades; and from SSE to long-polling
//   (`GET /poll`, one request per round) when the stream passes no byte either, e.g. behind a
//   proxy that buffers whole responses. `transports` limits or forces the choice;
// - keeps the token out of URLs (they end up in access logs): `bearer.<jwt>` in
//   Sec-WebSocket-Protocol for WebSocket, `Authorization: Bearer` for SSE (read with fetch, not
//   EventSource, which cannot send headers) and HTTP publishes.
//
// Everything that touches time, randomness or the network is injectable, so the unit tests
// drive the reconnect logic deterministically.

import { backoffDelay, DEFAULT_RECONNECT } from './backoff.js';
import { compareOffsets, minOffset } from './offsets.js';
import { readEventStream } from './sse.js';

const WS_OPEN = 1;
/** Prefix of the refs of the client's `ping` frames (publishes and subscribes use `c-`). */
const PING_REF_PREFIX = 'k-';
/** The heartbeat interval assumed until a server announces one (chat-node's default), ms. */
const DEFAULT_HEARTBEAT = 30000;
/** Close code for a connection the client found dead: the same meaning as the server's. */
const CLOSE_HEARTBEAT_TIMEOUT = 4000;
/** What browsers report for a connection that failed or was dropped without a close frame. */
const CLOSE_ABNORMAL = 1006;
/** The protocol's WebSocket subprotocol; the server picks it when offered. */
const SUBPROTOCOL = 'chat.v1';
/** Prefix of the subprotocol that carries the token. */
const BEARER_PREFIX = 'bearer.';
/** Requests whose pending entry waits for an answer (ack, page, presence) or an error. */
const ANSWERED = new Set(['publish', 'history', 'presence', 'presence_stats']);
/** The transports, in the order they are tried. */
const TRANSPORTS = ['websocket', 'sse', 'longpoll'];
/** SSE events whose data is a protocol frame (the rest: `close`). */
const SSE_FRAME_EVENTS = new Set(['message', 'subscribed', 'join', 'leave', 'unsubscribed']);

/** An error reported by the server (`code` from the protocol) or by the client itself. */
export class ChatError extends Error {
  /** @param {string} code @param {string} message */
  constructor(code, message) {
    super(message || code);
    this.name = 'ChatError';
    this.code = code;
  }
}

function deferred() {
  let resolve;
  let reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => {}); // the app may never await it; a rejection is also reported as an event
  return { promise, resolve, reject };
}

/** The `code` of a `close` event's data (`{"code":1008,"reason":"token_expired"}`), or null. */
function closeCodeOf(data) {
  try {
    const code = JSON.parse(data)?.code;
    return Number.isInteger(code) ? code : null;
  } catch {
    return null;
  }
}

function defaultUrl() {
  const loc = globalThis.location;
  if (!loc) throw new ChatError('bad_option', 'no url given and no window.location to derive it from');
  return `${loc.protocol === 'https:' ? 'wss' : 'ws'}://${loc.host}/ws`;
}

/** ws://host/prefix/ws -> http://host/prefix */
function httpBaseOf(wsUrl) {
  const u = new URL(wsUrl);
  u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
  u.search = '';
  u.hash = '';
  u.pathname = u.pathname.replace(/\/ws\/?$/, '');
  return u.toString().replace(/\/$/, '');
}

export class ChatClient {
  #o;
  #token;
  #state = 'idle';
  #transport = null;
  #node = null;
  #ws = null;
  #sse = null;
  /** the long-poll loop's controller (aborting it ends the loop) */
  #poller = null;
  /** aborts the poll in flight so the next one goes out with the new channel set */
  #pollRound = null;
  #generation = 0;
  #attempt = 0;
  #wsFailures = 0;
  /** SSE attempts in a row that got no byte of their stream (a buffering proxy) */
  #sseFailures = 0;
  #retryTimer = null;
  /** while on SSE or long-polling: the timer of the next WebSocket upgrade probe */
  #upgradeTimer = null;
  /** the WebSocket upgrade probe in flight, if any */
  #probe = null;
  #lastDelay = null;
  #lastCode = null;
  #refSeq = 0;
  #connectTimer = null;
  #livenessTimer = null;
  /** heartbeat interval announced by the last `welcome`, ms (null: none yet) */
  #serverHeartbeat = null;
  /** whether any frame (or SSE chunk) arrived since the last liveness tick */
  #heard = false;
  /** ref of the ping sent at the last liveness tick, if any */
  #pingRef = null;
  /** @type {Map<string, {handlers: Set<Function>, lastOffset: string | null, epoch: string | null, subscribed: boolean, ready: ReturnType<typeof deferred>}>} */
  #channels = new Map();
  /** @type {Map<string, {kind: 'publish' | 'subscribe' | 'history' | 'presence' | 'presence_stats', channel: string, resolve?: Function, reject?: Function, timer?: any, sent?: boolean, frame?: object}>} */
  #pending = new Map();
  /** @type {Map<string, Set<Function>>} */
  #listeners = new Map();

  /** @param {import('./index.js').ChatClientOptions} [options] */
  constructor(options = {}) {
    const g = globalThis;
    this.#o = {
      url: options.url ?? defaultUrl(),
      httpUrl: options.httpUrl,
      getToken: options.getToken,
      reconnect: { ...DEFAULT_RECONNECT, ...(options.reconnect ?? {}) },
      drainDelay: options.drainDelay ?? 2000,
      // `sse: false` (older than long-polling) meant "WebSocket only": it turns long-polling
      // off too, unless `longPoll: true` or `transports` asks for it.
      transports: TRANSPORTS.filter(
        (t) =>
          (options.transports ?? TRANSPORTS).includes(t) &&
          !(t === 'sse' && options.sse === false) &&
          !(t === 'longpoll' && (options.longPoll ?? (options.transports || options.sse !== false)) === false),
      ),
      sseAfterFailures: options.sseAfterFailures ?? 2,
      pollAfterFailures: options.pollAfterFailures ?? 1,
      pollWait: options.pollWait ?? 25000,
      upgradeInterval: options.upgradeInterval ?? 60000,
      publishTimeout: options.publishTimeout ?? 10000,
      connectTimeout: options.connectTimeout ?? 10000,
      heartbeat: options.heartbeat ?? null,
      WebSocket: options.WebSocket ?? g.WebSocket,
      fetch: options.fetch ?? (g.fetch ? g.fetch.bind(g) : undefined),
      setTimeout: options.setTimeout ?? g.setTimeout.bind(g),
      clearTimeout: options.clearTimeout ?? g.clearTimeout.bind(g),
      random: options.random ?? Math.random,
    };
    this.#o.httpUrl ??= httpBaseOf(this.#o.url);
    if (this.#o.transports.length === 0) throw new ChatError('bad_option', 'no transport left to use');
    this.#o.sse = this.#o.transports.includes('sse');
    this.#o.longPoll = this.#o.transports.includes('longpoll');
    this.#token = options.token ?? null;
  }

  /** `idle` | `connecting` | `open` | `reconnecting` | `failed` | `closed` */
  get state() {
    return this.#state;
  }
  /** `websocket` | `sse` | `longpoll` | null (not connected) */
  get transport() {
    return this.#transport;
  }
  /** id of the chat-node this client is connected to (from `welcome`), or null */
  get node() {
    return this.#node;
  }
  /** offset of the last message delivered on `channel`, or null */
  lastOffset(channel) {
    return this.#channels.get(channel)?.lastOffset ?? null;
  }
  /** epoch of `channel`'s history (from its last `subscribed`), or null */
  epoch(channel) {
    return this.#channels.get(channel)?.epoch ?? null;
  }

  /**
   * Listens to `state`, `welcome`, `message`, `gap`, `error`, and `join` / `leave`
   * (`{channel, info: {client, user, conn_info?}}`, for subscribed channels whose namespace has
   * join/leave on; over WebSocket and SSE). Returns a function that stops listening.
   * @param {string} type @param {Function} fn
   */
  on(type, fn) {
    if (!this.#listeners.has(type)) this.#listeners.set(type, new Set());
    this.#listeners.get(type).add(fn);
    return () => this.#listeners.get(type)?.delete(fn);
  }

  /** Opens the connection (again, after `failed` or `closed`). */
  connect() {
    if (this.#state === 'connecting' || this.#state === 'open' || this.#state === 'reconnecting') return;
    this.#attempt = 0;
    this.#wsFailures = 0;
    this.#sseFailures = 0;
    this.#setState('connecting');
    this.#openPreferred();
  }

  /**
   * Opens the first transport worth trying: WebSocket when allowed; else SSE unless it failed
   * `pollAfterFailures` times in a row and long-polling is allowed; else long-polling.
   */
  #openPreferred() {
    const t = this.#o.transports;
    if (t.includes('websocket')) this.#openWebSocket();
    else if (this.#o.sse && this.#o.fetch && !(this.#o.longPoll && this.#sseFailures >= this.#o.pollAfterFailures)) {
      this.#openSse();
    } else this.#openLongPoll();
  }

  /** Closes the connection for good (until `connect()`); pending publishes are rejected. */
  close() {
    this.#generation++;
    this.#clearRetry();
    this.#clearTimers();
    this.#closeTransports(1000);
    for (const [ref, p] of this.#pending) {
      if (ANSWERED.has(p.kind)) this.#settle(ref, new ChatError('closed', 'client closed'));
    }
    this.#pending.clear();
    for (const ch of this.#channels.values()) ch.subscribed = false;
    this.#transport = null;
    this.#node = null;
    this.#setState('closed');
  }

  /**
   * Subscribes `handler` to `channel`. Several handlers may share a channel.
   * `since` asks for the history after that offset (first subscription of the channel only),
   * `epoch` names the epoch that offset came from (a different current epoch is a `gap`);
   * `last` asks for the newest `last` messages instead (the server caps it), on the first
   * subscribe only: resubscribes resume with `since`.
   * `token` is a subscription token for the channel (needed in a private namespace, a grant of
   * its own elsewhere): a string, or a function `(channel) => string | Promise<string>` called
   * for every (re)subscribe, so an expired token is replaced by a fresh one. A channel with a
   * token is subscribed over WebSocket only (the SSE fallback leaves it out).
   * @returns {{channel: string, ready: Promise<void>, unsubscribe: () => void}}
   */
  subscribe(channel, handler, { since, epoch, last, token } = {}) {
    let ch = this.#channels.get(channel);
    if (!ch) {
      ch = {
        handlers: new Set(),
        lastOffset: since ?? null,
        epoch: epoch ?? null,
        last: since == null ? (last ?? null) : null,
        token: token ?? null,
        subscribed: false,
        ready: deferred(),
      };
      this.#channels.set(channel, ch);
      if (this.#transport === 'websocket') this.#sendSubscribe(channel, ch);
      else if (this.#transport === 'sse') this.#restartSse();
      else if (this.#transport === 'longpoll') this.#restartPoll();
    }
    if (handler) ch.handlers.add(handler);
    const entry = ch;
    return {
      channel,
      ready: entry.ready.promise,
      unsubscribe: () => {
        if (handler) entry.handlers.delete(handler);
        if (entry.handlers.size === 0 && this.#channels.get(channel) === entry) this.#dropChannel(channel);
      },
    };
  }

  /**
   * A page of `channel`'s history: `{channel, messages, offset, epoch}` (`messages` are message
   * frames, oldest first, or newest first with `reverse`; `offset` is the channel's newest).
   * `limit` is capped by the server; `before` / `since` are exclusive offsets. Over the
   * WebSocket when it is open, else `GET /api/history`. A short page is not the end (the
   * server also bounds a page's bytes); an empty one is.
   * @param {string} channel
   * @param {{limit?: number, before?: string, since?: string, reverse?: boolean, timeout?: number}} [options]
   */
  history(channel, { limit, before, since, reverse, timeout } = {}) {
    const query = { channel };
    if (limit != null) query.limit = limit;
    if (before != null) query.before = before;
    if (since != null) query.since = since;
    if (reverse) query.reverse = true;
    if (this.#transport !== 'websocket') return this.#httpHistory(query);
    return new Promise((resolve, reject) => {
      const ref = `c-${++this.#refSeq}`;
      const timer = this.#o.setTimeout(
        () => this.#settle(ref, new ChatError('timeout', 'no answer from the server')),
        timeout ?? this.#o.publishTimeout,
      );
      this.#pending.set(ref, { kind: 'history', channel, resolve, reject, timer, sent: true });
      if (!this.#send({ type: 'history', ...query, ref })) {
        this.#settle(ref, new ChatError('not_connected', 'connection not open'));
      }
    });
  }

  /**
   * Who is subscribed to `channel` (namespaces with presence only):
   * `{channel, clients: [{client, user, conn_info?}], total, truncated?}`. `total` counts every
   * client; `clients` is capped by the server (`truncated: true` then). Needs the WebSocket.
   * @param {string} channel @param {{timeout?: number}} [options]
   */
  presence(channel, { timeout } = {}) {
    return this.#request('presence', { type: 'presence', channel }, timeout);
  }

  /**
   * How many clients and distinct users are subscribed to `channel`: `{channel, clients, users}`.
   * @param {string} channel @param {{timeout?: number}} [options]
   */
  presenceStats(channel, { timeout } = {}) {
    return this.#request('presence_stats', { type: 'presence_stats', channel }, timeout);
  }

  /** Sends a request frame over the WebSocket and resolves with its answer (without `type`/`ref`). */
  #request(kind, frame, timeout) {
    if (this.#transport !== 'websocket') {
      return Promise.reject(new ChatError('not_connected', `${kind} needs the WebSocket`));
    }
    return new Promise((resolve, reject) => {
      const ref = `c-${++this.#refSeq}`;
      const timer = this.#o.setTimeout(
        () => this.#settle(ref, new ChatError('timeout', 'no answer from the server')),
        timeout ?? this.#o.publishTimeout,
      );
      this.#pending.set(ref, { kind, channel: frame.channel, resolve, reject, timer, sent: true });
      if (!this.#send({ ...frame, ref })) {
        this.#settle(ref, new ChatError('not_connected', 'connection not open'));
      }
    });
  }

  async #httpHistory(query) {
    const url = new URL(`${this.#o.httpUrl}/api/history`);
    for (const [key, value] of Object.entries(query)) url.searchParams.set(key, String(value));
    const headers = { Accept: 'application/json' };
    if (this.#token) headers.Authorization = `Bearer ${this.#token}`;
    let res;
    try {
      res = await this.#o.fetch(url.toString(), { headers, cache: 'no-store' });
    } catch (err) {
      throw new ChatError('connection_lost', String(err));
    }
    let body = null;
    try {
      body = await res.json();
    } catch {
      // not JSON
    }
    if (!res.ok) {
      const code = body?.code ?? (res.status === 401 ? 'unauthorized' : `http_${res.status}`);
      throw new ChatError(code, body?.message ?? `HTTP ${res.status}`);
    }
    return body;
  }

  /** Stops every subscription of `channel`. */
  unsubscribe(channel) {
    if (this.#channels.has(channel)) this.#dropChannel(channel);
  }

  /**
   * Publishes `data` on `channel`; resolves with the message's offset once the server stored it.
   * While (re)connecting the message waits in a queue and goes out once connected; a message
   * already sent when the connection drops is rejected with `connection_lost` (its fate is
   * unknown, so the client never resends it on its own: that could show it twice).
   * @returns {Promise<{offset: string}>}
   */
  publish(channel, data, { timeout } = {}) {
    if (this.#state === 'idle' || this.#state === 'closed' || this.#state === 'failed') {
      return Promise.reject(new ChatError('not_connected', `client is ${this.#state}`));
    }
    if (this.#transport === 'sse' || this.#transport === 'longpoll') return this.#httpPublish(channel, data);
    return new Promise((resolve, reject) => {
      const ref = `c-${++this.#refSeq}`;
      const frame = { type: 'publish', channel, data, ref };
      const timer = this.#o.setTimeout(
        () => this.#settle(ref, new ChatError('timeout', 'no answer from the server')),
        timeout ?? this.#o.publishTimeout,
      );
      this.#pending.set(ref, { kind: 'publish', channel, resolve, reject, timer, sent: false, frame });
      if (this.#transport === 'websocket') this.#sendPublish(ref);
    });
  }

  // ---- connection lifecycle ------------------------------------------------------------

  #openWebSocket() {
    const gen = ++this.#generation;
    // The token travels in Sec-WebSocket-Protocol as `bearer.<jwt>`, never in the URL: URLs end
    // up in the access logs of every proxy and Ingress on the way. The server answers with
    // `chat.v1`, which is offered first.
    const protocols = this.#token ? [SUBPROTOCOL, `${BEARER_PREFIX}${this.#token}`] : [SUBPROTOCOL];
    let ws;
    let opened = false;
    try {
      ws = new this.#o.WebSocket(this.#o.url, protocols);
    } catch (err) {
      this.#emit('error', new ChatError('connect_failed', String(err)));
      this.#o.setTimeout(() => gen === this.#generation && this.#afterClose(CLOSE_ABNORMAL, false), 0);
      return;
    }
    this.#ws = ws;
    if (this.#o.connectTimeout > 0) {
      // Until `welcome`, not just `open`: a proxy that accepts the upgrade but never passes
      // frames on is as useless as one that never answers. Counted as a failed handshake, so
      // the SSE fallback follows as for any other.
      this.#connectTimer = this.#o.setTimeout(() => {
        this.#connectTimer = null;
        if (gen !== this.#generation) return;
        this.#emit('error', new ChatError('connect_timeout', `no welcome within ${this.#o.connectTimeout} ms`));
        this.#abandonWebSocket(CLOSE_ABNORMAL, false);
      }, this.#o.connectTimeout);
    }
    ws.onopen = () => {
      if (gen !== this.#generation) return;
      opened = true;
      this.#transport = 'websocket';
      for (const [channel, ch] of this.#channels) this.#sendSubscribe(channel, ch);
      for (const [ref, p] of this.#pending) if (p.kind === 'publish' && !p.sent) this.#sendPublish(ref);
      this.#setState('open');
    };
    ws.onmessage = (ev) => {
      if (gen !== this.#generation) return;
      this.#heard = true;
      this.#onFrame(ev.data);
    };
    ws.onerror = () => {}; // a close event always follows
    ws.onclose = (ev) => {
      if (gen !== this.#generation) return;
      this.#ws = null;
      this.#afterClose(ev.code, opened);
    };
  }

  /**
   * Gives up on the current WebSocket (connect timeout, liveness lost): its late events are
   * ignored, and the client goes on as if it had closed with `code`.
   */
  #abandonWebSocket(code, opened) {
    const ws = this.#ws;
    this.#generation++;
    this.#ws = null;
    if (ws) {
      try {
        ws.close(CLOSE_HEARTBEAT_TIMEOUT, 'no answer');
      } catch {
        // closing already
      }
    }
    this.#afterClose(code, opened);
  }

  /**
   * Every heartbeat interval: if the ping of the previous tick got no frame at all back (not
   * its pong, nor anything else) the connection is dead; otherwise send a new ping. A
   * connection that dies is noticed at the second tick after its death at the latest, i.e.
   * within two intervals. Any frame counts, so a server that does not know `ping` (it answers
   * `unknown_type`) works too.
   */
  #startLiveness() {
    this.#clearLiveness();
    const every = this.#heartbeatMs();
    if (!(every > 0)) return;
    const gen = this.#generation;
    this.#heard = true;
    this.#pingRef = null;
    const tick = () => {
      this.#livenessTimer = null;
      if (gen !== this.#generation) return;
      if (this.#pingRef !== null && !this.#heard) {
        this.#emit('error', new ChatError('heartbeat_timeout', `no answer to a ping within ${every} ms`));
        this.#abandonWebSocket(CLOSE_HEARTBEAT_TIMEOUT, true);
        return;
      }
      this.#heard = false;
      this.#pingRef = `${PING_REF_PREFIX}${++this.#refSeq}`;
      this.#send({ type: 'ping', ref: this.#pingRef });
      this.#livenessTimer = this.#o.setTimeout(tick, every);
    };
    this.#livenessTimer = this.#o.setTimeout(tick, every);
  }

  /**
   * The SSE stream cannot be pinged: the server sends a keep-alive comment whenever it sent
   * nothing for an interval. Checked every half interval; three silent checks in a row (no
   * byte for at least 1.5 intervals, where a live stream has at most one) mean the stream has
   * stalled: noticed within two intervals of its last byte.
   */
  #watchSse(gen, controller, onStall) {
    this.#clearLiveness();
    const every = this.#heartbeatMs();
    if (!(every > 0)) return;
    const period = every / 2;
    let silent = 0;
    this.#heard = true;
    const tick = () => {
      this.#livenessTimer = null;
      if (gen !== this.#generation || controller.signal.aborted) return;
      silent = this.#heard ? 0 : silent + 1;
      this.#heard = false;
      if (silent >= 3) {
        onStall(every);
        return;
      }
      this.#livenessTimer = this.#o.setTimeout(tick, period);
    };
    this.#livenessTimer = this.#o.setTimeout(tick, period);
  }

  /** The interval to check liveness by, ms: the option, else the server's, else 30 s; 0 = off. */
  #heartbeatMs() {
    return this.#o.heartbeat ?? this.#serverHeartbeat ?? DEFAULT_HEARTBEAT;
  }

  #clearLiveness() {
    if (this.#livenessTimer !== null) this.#o.clearTimeout(this.#livenessTimer);
    this.#livenessTimer = null;
    this.#pingRef = null;
  }

  #clearTimers() {
    this.#stopUpgradeProbes();
    if (this.#connectTimer !== null) this.#o.clearTimeout(this.#connectTimer);
    this.#connectTimer = null;
    this.#clearLiveness();
  }

  /** The transport is gone: fail what was in flight, then decide how to come back. */
  #afterClose(code, opened) {
    this.#clearTimers();
    this.#transport = null;
    this.#node = null;
    this.#lastCode = code;
    for (const ch of this.#channels.values()) ch.subscribed = false;
    for (const [ref, p] of this.#pending) {
      if (p.kind === 'subscribe') this.#pending.delete(ref);
      else if (p.sent) this.#settle(ref, new ChatError('connection_lost', `connection closed (${code}) before the ack`));
    }
    if (!opened) this.#wsFailures++;
    switch (code) {
      case 1001: // node draining: go elsewhere, but not all clients in the same instant
        this.#scheduleRetry(Math.floor(this.#o.random() * this.#o.drainDelay));
        return;
      case 4001: // slow consumer: reconnect now; `since` recovers what was dropped
        this.#scheduleRetry(0);
        return;
      case 1008: // policy: token refused mid-session (or origin refused)
        this.#refreshToken('closed with 1008');
        return;
      default:
        if (!opened && (this.#o.sse || this.#o.longPoll) && this.#o.fetch && this.#wsFailures >= this.#o.sseAfterFailures) {
          this.#setState('reconnecting');
          if (this.#o.sse && !(this.#o.longPoll && this.#sseFailures >= this.#o.pollAfterFailures)) this.#openSse();
          else this.#openLongPoll();
          return;
        }
        // With SSE or long-polling on, its attempt sees a 401 itself (fetch shows the status);
        // without, ask.
        if (!opened && !this.#o.sse && !this.#o.longPoll && this.#o.fetch && (this.#token || this.#o.getToken)) {
          this.#probeAuth();
          return;
        }
        this.#scheduleRetry();
    }
  }

  /**
   * A handshake failed, and browsers do not say why (a 401 looks like a dead node: close 1006
   * without open). Ask with a plain GET of the WebSocket URL, which chat-node checks like a
   * handshake (401 for a missing or refused token) before it looks for the upgrade: 401 ->
   * ask the app for a fresh token; anything else (or no answer within `connectTimeout`) ->
   * retry with backoff as usual. Needs the same origin, or CORS, like the SSE fallback.
   */
  #probeAuth() {
    const gen = this.#generation;
    this.#setState('reconnecting');
    const url = new URL(this.#o.url);
    url.protocol = url.protocol === 'wss:' ? 'https:' : 'http:';
    const headers = {};
    if (this.#token) headers.Authorization = `Bearer ${this.#token}`;
    const controller = typeof AbortController === 'function' ? new AbortController() : null;
    let done = false;
    const finish = (status) => {
      if (done) return;
      done = true;
      if (timer !== null) this.#o.clearTimeout(timer);
      if (gen !== this.#generation) return;
      if (status === 401) this.#refreshToken('HTTP 401 on the WebSocket handshake');
      else this.#scheduleRetry();
    };
    const timer =
      this.#o.connectTimeout > 0
        ? this.#o.setTimeout(() => {
            controller?.abort();
            finish(null);
          }, this.#o.connectTimeout)
        : null;
    Promise.resolve()
      .then(() => this.#o.fetch(url.toString(), { headers, cache: 'no-store', signal: controller?.signal }))
      .then(
        (res) => finish(res?.status ?? null),
        () => finish(null),
      );
  }

  #scheduleRetry(delay) {
    this.#clearRetry();
    if (this.#attempt >= this.#o.reconnect.maxAttempts) {
      this.#lastDelay = null;
      this.#failPending(new ChatError('failed', 'gave up reconnecting'));
      this.#setState('failed');
      return;
    }
    this.#lastDelay = delay ?? backoffDelay(this.#attempt, this.#o.reconnect, this.#o.random);
    this.#attempt++;
    this.#setState('reconnecting');
    const gen = this.#generation;
    this.#retryTimer = this.#o.setTimeout(() => {
      this.#retryTimer = null;
      if (gen === this.#generation) this.#openPreferred();
    }, this.#lastDelay);
  }

  #clearRetry() {
    if (this.#retryTimer !== null) this.#o.clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
  }

  async #refreshToken(reason) {
    const gen = this.#generation;
    if (!this.#o.getToken) {
      this.#emit('error', new ChatError('unauthorized', `${reason} and no getToken callback`));
      this.#failPending(new ChatError('unauthorized', reason));
      this.#setState('failed');
      return;
    }
    this.#setState('reconnecting');
    let token;
    try {
      token = await this.#o.getToken(reason);
    } catch (err) {
      token = null;
      this.#emit('error', new ChatError('unauthorized', `getToken failed: ${err}`));
    }
    if (gen !== this.#generation) return; // closed meanwhile
    if (!token) {
      this.#failPending(new ChatError('unauthorized', reason));
      this.#setState('failed');
      return;
    }
    this.#token = token;
    this.#scheduleRetry(0);
  }

  #closeTransports(code) {
    if (this.#ws) {
      try {
        this.#ws.close(code);
      } catch {
        // already closing
      }
      this.#ws = null;
    }
    if (this.#sse) {
      this.#sse.abort();
      this.#sse = null;
    }
    if (this.#poller) {
      this.#poller.abort();
      this.#poller = null;
    }
  }

  #failPending(err) {
    for (const [ref, p] of this.#pending) {
      if (ANSWERED.has(p.kind)) this.#settle(ref, err);
      else this.#pending.delete(ref);
    }
  }

  // ---- back to WebSocket from a fallback ---------------------------------------------------

  /**
   * On SSE or long-polling, every `upgradeInterval` ms: try a WebSocket on the side, and when
   * one gets through (its `welcome` arrives), leave the fallback for a fresh WebSocket, which
   * resubscribes from each channel's last offset (nothing is lost or shown twice). A probe that
   * fails changes nothing: the fallback goes on and the next probe follows an interval later.
   * The fallback is otherwise left only when it breaks (a network that blocked WebSockets once
   * may let them through later, e.g. after the user left a captive or corporate network).
   */
  #scheduleUpgradeProbe() {
    this.#stopUpgradeProbes();
    if (!(this.#o.upgradeInterval > 0) || !this.#o.transports.includes('websocket') || !this.#o.WebSocket) return;
    const gen = this.#generation;
    this.#upgradeTimer = this.#o.setTimeout(() => {
      this.#upgradeTimer = null;
      if (gen === this.#generation) this.#probeWebSocket(gen);
    }, this.#o.upgradeInterval);
  }

  #probeWebSocket(gen) {
    const protocols = this.#token ? [SUBPROTOCOL, `${BEARER_PREFIX}${this.#token}`] : [SUBPROTOCOL];
    let probe;
    try {
      probe = new this.#o.WebSocket(this.#o.url, protocols);
    } catch {
      this.#scheduleUpgradeProbe();
      return;
    }
    let timer = null;
    const done = () => {
      if (timer !== null) this.#o.clearTimeout(timer);
      probe.onopen = probe.onmessage = probe.onerror = probe.onclose = null;
      if (this.#probe?.socket === probe) this.#probe = null;
      try {
        probe.close(1000, 'probe');
      } catch {
        // closing already
      }
    };
    const failed = () => {
      done();
      if (gen === this.#generation) this.#scheduleUpgradeProbe();
    };
    this.#probe = { socket: probe, stop: done };
    if (this.#o.connectTimeout > 0) timer = this.#o.setTimeout(failed, this.#o.connectTimeout);
    probe.onerror = () => {};
    probe.onclose = failed;
    probe.onmessage = () => {
      // A frame came through (the server's `welcome`): WebSocket works on this network now.
      done();
      if (gen !== this.#generation || (this.#transport !== 'sse' && this.#transport !== 'longpoll')) return;
      this.#leaveFallback();
      this.#wsFailures = 0;
      this.#openWebSocket();
    };
  }

  /** Ends the SSE stream or the long-poll loop without treating it as a failure. */
  #leaveFallback() {
    this.#generation++;
    this.#clearTimers();
    if (this.#sse) this.#sse.abort();
    this.#sse = null;
    if (this.#poller) this.#poller.abort();
    this.#poller = null;
    this.#pollRound = null;
    this.#transport = null;
    for (const ch of this.#channels.values()) ch.subscribed = false;
  }

  #stopUpgradeProbes() {
    if (this.#upgradeTimer !== null) this.#o.clearTimeout(this.#upgradeTimer);
    this.#upgradeTimer = null;
    if (this.#probe) this.#probe.stop();
    this.#probe = null;
  }

  // ---- SSE fallback ------------------------------------------------------------------------

  #openSse() {
    const gen = ++this.#generation;
    const controller = new AbortController();
    this.#sse = controller;
    const url = new URL(`${this.#o.httpUrl}/sse`);
    // Channels with a subscription token wait for WebSocket: SSE carries no such tokens.
    const carried = [...this.#channels].filter(([, c]) => c.token === null);
    for (const [channel] of carried) url.searchParams.append('channel', channel);
    // one `since` for every channel: the oldest one; newer duplicates are dropped by offset
    const since = minOffset(carried.map(([, c]) => c.lastOffset));
    if (since) {
      url.searchParams.set('since', since);
      // the epochs those offsets came from: a channel whose history is now another one gets a gap
      const epochs = new Set(carried.map(([, c]) => c.epoch).filter(Boolean));
      for (const epoch of epochs) url.searchParams.append('epoch', epoch);
    }
    const headers = { Accept: 'text/event-stream' };
    if (this.#token) headers.Authorization = `Bearer ${this.#token}`;
    let opened = false;
    let stalled = false;
    // Whether any byte of the stream arrived: chat-node writes the `subscribed` events at once,
    // so a stream that stays empty for `connectTimeout` is held back by a buffering proxy.
    let gotBytes = false;
    if (this.#o.connectTimeout > 0) {
      this.#connectTimer = this.#o.setTimeout(() => {
        this.#connectTimer = null;
        if (gen !== this.#generation || opened) return;
        stalled = true;
        controller.abort();
      }, this.#o.connectTimeout);
    }
    const run = async () => {
      const res = await this.#o.fetch(url.toString(), { headers, signal: controller.signal, cache: 'no-store' });
      if (gen !== this.#generation) return;
      if (this.#connectTimer !== null) this.#o.clearTimeout(this.#connectTimer);
      this.#connectTimer = null;
      if (res.status === 401) {
        controller.abort();
        this.#sse = null;
        this.#refreshToken('HTTP 401');
        return;
      }
      if (!res.ok || !res.body) throw new ChatError('sse_failed', `SSE answered HTTP ${res.status}`);
      opened = true;
      if (this.#o.connectTimeout > 0 && this.#o.longPoll) {
        this.#connectTimer = this.#o.setTimeout(() => {
          this.#connectTimer = null;
          if (gen !== this.#generation || gotBytes) return;
          stalled = true;
          this.#emit('error', new ChatError('connect_timeout', `SSE stream passed no byte within ${this.#o.connectTimeout} ms`));
          controller.abort();
        }, this.#o.connectTimeout);
      }
      this.#transport = 'sse';
      for (const ch of this.#channels.values()) {
        ch.subscribed = true;
        ch.ready.resolve();
      }
      this.#attempt = 0;
      this.#setState('open');
      this.#scheduleUpgradeProbe();
      for (const [ref, p] of this.#pending) {
        if (p.kind === 'publish' && !p.sent) this.#sendPublishOverHttp(ref);
      }
      this.#watchSse(gen, controller, (every) => {
        stalled = true;
        this.#emit('error', new ChatError('heartbeat_timeout', `SSE stream silent for 1.5 × ${every} ms`));
        controller.abort();
      });
      // The server ends a stream with a `close` event carrying the WebSocket close code it
      // would have sent (1008 token expired, 1001 draining, 4001 slow consumer).
      let closeCode = null;
      await readEventStream(
        res.body,
        (ev) => {
          if (gen !== this.#generation) return;
          if (SSE_FRAME_EVENTS.has(ev.event)) this.#onFrame(ev.data);
          else if (ev.event === 'close') closeCode = closeCodeOf(ev.data);
        },
        () => {
          this.#heard = true; // any bytes, keep-alive comments included
          if (!gotBytes) {
            gotBytes = true;
            this.#sseFailures = 0;
          }
        },
      );
      const ended = new ChatError('sse_ended', `event stream ended${closeCode ? ` (${closeCode})` : ''}`);
      ended.closeCode = closeCode;
      throw ended;
    };
    run().catch((err) => {
      if (gen !== this.#generation) return;
      this.#clearTimers();
      this.#sse = null;
      if (!opened) {
        const why = stalled ? new ChatError('connect_timeout', `SSE answered nothing within ${this.#o.connectTimeout} ms`) : err;
        this.#emit('error', why instanceof ChatError ? why : new ChatError('sse_failed', String(why)));
      }
      this.#transport = null;
      this.#lastCode = stalled ? (opened ? CLOSE_HEARTBEAT_TIMEOUT : CLOSE_ABNORMAL) : (err?.closeCode ?? null);
      for (const ch of this.#channels.values()) ch.subscribed = false;
      if (!gotBytes) this.#sseFailures++;
      if (err?.closeCode === 1008) this.#refreshToken('SSE closed with 1008');
      else if (err?.closeCode === 1001) this.#scheduleRetry(Math.floor(this.#o.random() * this.#o.drainDelay));
      else if (!gotBytes && this.#o.longPoll && this.#sseFailures >= this.#o.pollAfterFailures) {
        // Neither a WebSocket nor a stream gets through: poll.
        this.#setState('reconnecting');
        this.#openLongPoll();
      } else this.#scheduleRetry();
    });
  }

  /** The channel set changed while on SSE: reopen the stream with the new set. */
  #restartSse() {
    this.#clearTimers();
    if (this.#sse) this.#sse.abort();
    this.#sse = null;
    this.#openSse();
  }

  // ---- long-polling fallback ------------------------------------------------------------

  /**
   * Receives with `GET /poll` rounds: the first with `wait=0` (it answers at once, proving the
   * path and giving each channel its cursor), then `pollWait` each, every channel resuming
   * from its own offset (`channel=<name>@<offset>`). Publishes go over `POST /api/publish`. A
   * round that fails (network, HTTP error, no answer within `pollWait + connectTimeout`) ends
   * the transport: the next attempt tries WebSocket first again.
   */
  #openLongPoll() {
    const gen = ++this.#generation;
    const controller = new AbortController();
    this.#poller = controller;
    this.#transport = 'longpoll';
    for (const ch of this.#channels.values()) {
      ch.subscribed = true;
      ch.ready.resolve();
    }
    const opened = () => {
      if (this.#state === 'open') return;
      this.#attempt = 0;
      this.#setState('open');
      this.#scheduleUpgradeProbe();
      for (const [ref, p] of this.#pending) {
        if (p.kind === 'publish' && !p.sent) this.#sendPublishOverHttp(ref);
      }
    };
    const pause = (ms) =>
      new Promise((resolve) => {
        const timer = this.#o.setTimeout(resolve, ms);
        controller.signal.addEventListener('abort', () => {
          this.#o.clearTimeout(timer);
          resolve();
        });
      });
    const run = async () => {
      let first = true;
      while (gen === this.#generation && !controller.signal.aborted) {
        if (this.#channels.size === 0) {
          opened();
          // Nothing to poll: wait for a subscribe (or the end).
          await new Promise((resolve) => {
            this.#pollRound = { abort: resolve, restart: true };
            controller.signal.addEventListener('abort', resolve, { once: true });
          });
          continue;
        }
        await this.#loadLast(gen);
        if (gen !== this.#generation) return;
        const round = new AbortController();
        this.#pollRound = round;
        const abortRound = () => round.abort();
        controller.signal.addEventListener('abort', abortRound, { once: true });
        const wait = first ? 0 : this.#o.pollWait;
        const headers = { Accept: 'application/json' };
        if (this.#token) headers.Authorization = `Bearer ${this.#token}`;
        let timedOut = false;
        const timer =
          this.#o.connectTimeout > 0
            ? this.#o.setTimeout(() => {
                timedOut = true;
                round.abort();
              }, wait + this.#o.connectTimeout)
            : null;
        let res;
        let body = null;
        try {
          res = await this.#o.fetch(this.#pollUrl(wait), { headers, signal: round.signal, cache: 'no-store' });
          try {
            body = await res.json();
          } catch {
            // not JSON
          }
        } catch (err) {
          if (round.restart && !timedOut) continue; // the channel set changed: poll again
          if (timedOut) throw new ChatError('connect_timeout', `no poll answer within ${wait + this.#o.connectTimeout} ms`);
          throw new ChatError('connection_lost', String(err));
        } finally {
          if (timer !== null) this.#o.clearTimeout(timer);
          controller.signal.removeEventListener('abort', abortRound);
        }
        if (gen !== this.#generation) return;
        if (res.status === 401) {
          this.#poller = null;
          this.#refreshToken('HTTP 401');
          return;
        }
        if (res.status === 429) {
          // This client's polls are at the node's per-client limit (other tabs): wait a little.
          await pause(1000 * (Number(res.headers?.get?.('retry-after')) || 1));
          continue;
        }
        if (!res.ok) {
          const err = new ChatError(body?.code ?? `http_${res.status}`, body?.message ?? `poll answered HTTP ${res.status}`);
          err.status = res.status;
          throw err;
        }
        this.#onPollAnswer(body ?? {});
        first = false;
        opened();
      }
    };
    run().catch((err) => {
      if (gen !== this.#generation) return;
      this.#poller = null;
      this.#pollRound = null;
      this.#emit('error', err instanceof ChatError ? err : new ChatError('poll_failed', String(err)));
      this.#transport = null;
      this.#lastCode = null;
      for (const ch of this.#channels.values()) ch.subscribed = false;
      if (err?.code === 'draining') this.#scheduleRetry(Math.floor(this.#o.random() * this.#o.drainDelay));
      else this.#scheduleRetry();
    });
  }

  /**
   * `last` on a channel's first subscribe, while long-polling: its newest `last` messages come
   * from `GET /api/history` (newest first, shown oldest first), and the channel's cursor is the
   * history's newest offset, so the polls continue right after them.
   */
  async #loadLast(gen) {
    for (const [channel, ch] of [...this.#channels]) {
      if (!ch.last || ch.lastOffset !== null) continue;
      const page = await this.#httpHistory({ channel, limit: ch.last, reverse: true });
      if (gen !== this.#generation || this.#channels.get(channel) !== ch) continue;
      ch.last = null;
      if (page?.epoch) ch.epoch = page.epoch;
      for (const m of [...(page?.messages ?? [])].reverse()) this.#deliver(m);
      if (page?.offset && (ch.lastOffset === null || compareOffsets(page.offset, ch.lastOffset) > 0)) ch.lastOffset = page.offset;
    }
  }

  /** `/poll?channel=a@<offset>&channel=b&epoch=…&wait=<ms>ms` for the current channels. */
  #pollUrl(wait) {
    const url = new URL(`${this.#o.httpUrl}/poll`);
    const epochs = new Set();
    for (const [channel, ch] of this.#channels) {
      url.searchParams.append('channel', ch.lastOffset ? `${channel}@${ch.lastOffset}` : channel);
      if (ch.lastOffset && ch.epoch) epochs.add(ch.epoch);
    }
    for (const epoch of epochs) url.searchParams.append('epoch', epoch);
    url.searchParams.set('wait', `${Math.max(0, Math.floor(wait))}ms`);
    return url.toString();
  }

  /** Delivers a poll answer's messages and moves each channel's cursor (and epoch) on. */
  #onPollAnswer(body) {
    for (const m of body.messages ?? []) {
      if (m?.type === 'message') this.#deliver(m);
    }
    for (const [channel, cursor] of Object.entries(body.channels ?? {})) {
      const ch = this.#channels.get(channel);
      if (!ch || !cursor) continue;
      const epochChanged = ch.epoch !== null && cursor.epoch != null && cursor.epoch !== ch.epoch;
      if (cursor.epoch != null) ch.epoch = cursor.epoch;
      if (cursor.gap) {
        // A new history's offsets may be lower than the old ones: start from its cursor.
        if (cursor.offset) ch.lastOffset = cursor.offset;
        this.#emit('gap', { channel, epoch: ch.epoch, offset: cursor.offset ?? null, epochChanged });
      } else if (cursor.offset && (ch.lastOffset === null || compareOffsets(cursor.offset, ch.lastOffset) > 0)) {
        ch.lastOffset = cursor.offset;
      }
    }
  }

  /** The channel set changed while long-polling: the poll in flight gives way to a new one. */
  #restartPoll() {
    const round = this.#pollRound;
    if (!round) return;
    round.restart = true;
    round.abort();
  }

  #sendPublishOverHttp(ref) {
    const p = this.#pending.get(ref);
    if (!p) return;
    p.sent = true;
    this.#postPublish(p.channel, p.frame.data).then(
      (ack) => this.#settle(ref, null, ack),
      (err) => this.#settle(ref, err),
    );
  }

  #httpPublish(channel, data) {
    return this.#postPublish(channel, data);
  }

  async #postPublish(channel, data) {
    const headers = { 'Content-Type': 'application/json' };
    if (this.#token) headers.Authorization = `Bearer ${this.#token}`;
    let res;
    try {
      res = await this.#o.fetch(`${this.#o.httpUrl}/api/publish`, {
        method: 'POST',
        headers,
        body: JSON.stringify({ channel, data }),
      });
    } catch (err) {
      throw new ChatError('connection_lost', String(err));
    }
    let body = null;
    try {
      body = await res.json();
    } catch {
      // not JSON
    }
    if (!res.ok) {
      const code = body?.code ?? (res.status === 401 ? 'unauthorized' : `http_${res.status}`);
      throw new ChatError(code, body?.message ?? `HTTP ${res.status}`);
    }
    return { offset: body?.offset };
  }

  // ---- frames ----------------------------------------------------------------------------

  #send(frame) {
    if (!this.#ws || this.#ws.readyState !== WS_OPEN) return false;
    this.#ws.send(JSON.stringify(frame));
    return true;
  }

  #sendSubscribe(channel, ch) {
    const ref = `c-${++this.#refSeq}`;
    const frame = { type: 'subscribe', channel, ref };
    if (ch.lastOffset) {
      frame.since = ch.lastOffset;
      if (ch.epoch) frame.epoch = ch.epoch;
    } else if (ch.last) {
      frame.last = ch.last;
    }
    this.#pending.set(ref, { kind: 'subscribe', channel });
    if (ch.token === null) {
      this.#send(frame);
      return;
    }
    if (typeof ch.token === 'string') {
      frame.token = ch.token;
      this.#send(frame);
      return;
    }
    // A token callback: sent once it answers, on the same connection and subscription only.
    const ws = this.#ws;
    Promise.resolve()
      .then(() => ch.token(channel))
      .then(
        (value) => {
          if (this.#ws !== ws || this.#channels.get(channel) !== ch || !this.#pending.has(ref)) return;
          if (value) frame.token = value;
          this.#send(frame);
        },
        (err) => {
          if (!this.#pending.delete(ref)) return;
          if (this.#channels.get(channel) === ch) this.#channels.delete(channel);
          const error = new ChatError('token_failed', `subscription token for ${channel}: ${err}`);
          ch.ready.reject(error);
          this.#emit('error', error);
        },
      );
  }

  #sendPublish(ref) {
    const p = this.#pending.get(ref);
    if (p && this.#send(p.frame)) p.sent = true;
  }

  #dropChannel(channel) {
    const ch = this.#channels.get(channel);
    this.#channels.delete(channel);
    ch?.ready.reject(new ChatError('unsubscribed', `unsubscribed from ${channel}`));
    if (this.#transport === 'websocket') this.#send({ type: 'unsubscribe', channel });
    else if (this.#transport === 'sse') {
      if (this.#channels.size > 0) this.#restartSse();
    } else if (this.#transport === 'longpoll') this.#restartPoll();
  }

  #onFrame(text) {
    let f;
    try {
      f = JSON.parse(text);
    } catch {
      this.#emit('error', new ChatError('bad_json', 'server sent a frame that is not JSON'));
      return;
    }
    switch (f.type) {
      case 'welcome': {
        this.#node = f.node ?? null;
        this.#attempt = 0;
        this.#wsFailures = 0;
        if (this.#connectTimer !== null) this.#o.clearTimeout(this.#connectTimer);
        this.#connectTimer = null;
        // `heartbeat_ms` is exact; `heartbeat` (whole seconds) is all older nodes send.
        const ms = Number.isFinite(f.heartbeat_ms) ? f.heartbeat_ms : Number.isFinite(f.heartbeat) ? f.heartbeat * 1000 : NaN;
        if (ms > 0) this.#serverHeartbeat = ms;
        this.#startLiveness();
        this.#emit('welcome', f);
        this.#setState('open');
        break;
      }
      case 'pong':
        break; // #heard is set for every frame
      case 'subscribed': {
        const ch = this.#channels.get(f.channel);
        if (!ch) break;
        for (const [ref, p] of this.#pending) {
          if (p.kind === 'subscribe' && p.channel === f.channel) this.#pending.delete(ref);
        }
        ch.subscribed = true;
        ch.last = null; // asked once; resubscribes resume with `since`
        const epochChanged = ch.epoch !== null && f.epoch != null && f.epoch !== ch.epoch;
        if (f.epoch != null) ch.epoch = f.epoch;
        // After a gap the live messages follow `f.offset`; a new epoch's offsets may even be
        // lower than the old ones, which must not be dropped as already seen.
        // With `last`, `recovered` messages at or below `f.offset` follow: they are new here.
        if (((ch.lastOffset === null && !f.recovered) || f.gap) && f.offset) ch.lastOffset = f.offset;
        if (f.gap) this.#emit('gap', { channel: f.channel, epoch: ch.epoch, offset: f.offset ?? null, epochChanged });
        ch.ready.resolve();
        break;
      }
      case 'message':
        this.#deliver(f);
        break;
      case 'ack':
        this.#settle(f.ref, null, { offset: f.offset });
        break;
      case 'history':
      case 'presence':
      case 'presence_stats': {
        const { type: _type, ref, ...answer } = f;
        this.#settle(ref, null, answer);
        break;
      }
      case 'join':
      case 'leave':
        if (this.#channels.has(f.channel)) this.#emit(f.type, { channel: f.channel, info: f.info });
        break;
      case 'error':
        this.#onServerError(f);
        break;
      default:
        break; // unsubscribed, and frames of newer protocol versions
    }
  }

  #deliver(msg) {
    const ch = this.#channels.get(msg.channel);
    if (!ch) return;
    if (msg.offset != null) {
      if (ch.lastOffset !== null && compareOffsets(msg.offset, ch.lastOffset) <= 0) return; // seen
      ch.lastOffset = msg.offset;
    }
    for (const h of ch.handlers) {
      try {
        h(msg);
      } catch (err) {
        this.#emit('error', new ChatError('handler_failed', String(err)));
      }
    }
    this.#emit('message', msg);
  }

  #onServerError(f) {
    // A node that predates `ping` answers it with `unknown_type`: still proof of life.
    if (typeof f.ref === 'string' && f.ref.startsWith(PING_REF_PREFIX)) return;
    const err = new ChatError(f.code ?? 'internal', f.message ?? '');
    const p = f.ref ? this.#pending.get(f.ref) : undefined;
    if (ANSWERED.has(p?.kind)) {
      this.#settle(f.ref, err);
      return;
    }
    if (p?.kind === 'subscribe') {
      this.#pending.delete(f.ref);
      const ch = this.#channels.get(p.channel);
      if (ch) {
        this.#channels.delete(p.channel);
        ch.ready.reject(err);
      }
    }
    this.#emit('error', err);
  }

  #settle(ref, err, value) {
    const p = this.#pending.get(ref);
    if (!p || !ANSWERED.has(p.kind)) return;
    this.#pending.delete(ref);
    this.#o.clearTimeout(p.timer);
    if (err) p.reject(err);
    else p.resolve(value);
  }

  // ---- events ----------------------------------------------------------------------------

  #setState(state) {
    this.#state = state;
    this.#emit('state', {
      state,
      transport: this.#transport,
      node: this.#node,
      attempt: this.#attempt,
      delay: state === 'reconnecting' ? this.#lastDelay : null,
      code: this.#lastCode,
    });
  }

  #emit(type, value) {
    for (const fn of this.#listeners.get(type) ?? []) {
      try {
        fn(value);
      } catch {
        // a broken listener must not break the connection
      }
    }
  }
}
