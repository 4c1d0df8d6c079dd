// TypeScript types for @chatcluster/client (the implementation is plain ES modules).

/** A message frame, as sent by chat-node over WebSocket and as the data of an SSE `message` event. */
export interface ChatMessage<T = unknown> {
  type: 'message';
  channel: string;
  /** the message's id in the channel's history, `<ms>-<seq>`; absent in a namespace without history */
  offset?: string;
  /** JWT `sub` when auth is on, else the sender's connection id */
  from: string;
  /** Unix milliseconds */
  ts: number;
  data: T;
}

/** A page of a channel's history. A short page is not the end; an empty one is. */
export interface HistoryPage<T = unknown> {
  channel: string;
  /** oldest first, or newest first with `reverse` */
  messages: ChatMessage<T>[];
  /** the channel's newest offset */
  offset: string;
  /** the epoch of the channel's history */
  epoch: string;
}

/** One subscribed client, as presence and `join`/`leave` show it. */
export interface ClientInfo {
  /** the connection's id (its `welcome.client`) */
  client: string;
  /** the token's `sub`, else the client id */
  user: string;
  /** the token's `info` claim, when it has one */
  conn_info?: unknown;
}

/** Who is subscribed to a channel. */
export interface PresenceAnswer {
  channel: string;
  /** at most the server's `--max-presence` clients */
  clients: ClientInfo[];
  /** every client subscribed */
  total: number;
  /** `clients` lists fewer than `total` */
  truncated?: boolean;
}

export interface PresenceStats {
  channel: string;
  clients: number;
  /** distinct users among the clients */
  users: number;
}

export interface Welcome {
  type: 'welcome';
  node: string;
  client: string;
  /** heartbeat interval in seconds */
  heartbeat: number;
  /** the same interval in milliseconds (exact; nodes before 2026-12 omit it) */
  heartbeat_ms?: number;
}

export type ConnectionState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'failed' | 'closed';
export type Transport = 'websocket' | 'sse' | 'longpoll';

export interface StateChange {
  state: ConnectionState;
  transport: Transport | null;
  /** chat-node the client is connected to, once welcomed */
  node: string | null;
  /** reconnect attempts since the last successful connection */
  attempt: number;
  /** when `reconnecting`: ms until the next attempt */
  delay: number | null;
  /** close code of the last WebSocket close (1001 draining, 4001 slow consumer, 1008 policy, 1006 network or connect timeout, 4000 liveness check failed) */
  code: number | null;
}

export interface ReconnectPolicy {
  /** ceiling of the first retry delay, ms (default 500) */
  initialDelay?: number;
  /** cap of the retry delay, ms (default 15000) */
  maxDelay?: number;
  /** growth of the ceiling per failed attempt (default 2) */
  factor?: number;
  /** consecutive failed attempts before the state becomes `failed` (default 12) */
  maxAttempts?: number;
}

export interface ChatClientOptions {
  /** WebSocket URL, default `ws(s)://<location.host>/ws` */
  url?: string;
  /** base URL for SSE and `POST /api/publish`, default derived from `url` */
  httpUrl?: string;
  /** JWT, sent as the subprotocol `bearer.<jwt>` (WebSocket) or `Authorization: Bearer` (SSE, HTTP publish); never in a URL. Must be a JWT (or other HTTP-token characters) */
  token?: string;
  /** called on close 1008 or HTTP 401; resolve with a fresh token, or null to give up */
  getToken?: (reason: string) => Promise<string | null | undefined> | string | null | undefined;
  reconnect?: ReconnectPolicy;
  /** after close 1001 (node draining) reconnect after a random delay in [0, drainDelay) ms (default 2000) */
  drainDelay?: number;
  /** the transports allowed, tried in the order WebSocket -> SSE -> long-polling (default all three); one alone forces it */
  transports?: Transport[];
  /** fall back to SSE for receiving when WebSocket cannot connect (default true); `false` alone also turns long-polling off (WebSocket only), unless `longPoll: true` or `transports` asks for it */
  sse?: boolean;
  /** consecutive WebSocket handshake failures before trying SSE (or long-polling without SSE) (default 2) */
  sseAfterFailures?: number;
  /** fall back to long-polling (`GET /poll`) when SSE streams pass no byte either, e.g. behind a proxy that buffers responses (default true) */
  longPoll?: boolean;
  /** consecutive SSE attempts without a byte of stream before long-polling (default 1) */
  pollAfterFailures?: number;
  /** ms a long poll may wait for messages (default 25000; the server caps it, by default at 25 s) */
  pollWait?: number;
  /** on SSE or long-polling, ms between WebSocket probes; one that gets its `welcome` moves the client back to WebSocket (default 60000; 0 = never) */
  upgradeInterval?: number;
  /** ms to wait for a publish `ack` (default 10000) */
  publishTimeout?: number;
  /** ms from opening a WebSocket to its `welcome` (or from an SSE request to its response, and with long-polling allowed from that response to its first byte; a long poll gets `pollWait` + this) before the attempt is given up (default 10000; 0 = none) */
  connectTimeout?: number;
  /** liveness check interval in ms: default the `heartbeat_ms` (or `heartbeat`) the server announces in `welcome`, 30000 until one did; 0 = no liveness check */
  heartbeat?: number;
  // injection points (tests, non-browser runtimes)
  WebSocket?: new (url: string) => WebSocketLike;
  fetch?: typeof fetch;
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (id: unknown) => void;
  /** returns a number in [0, 1) */
  random?: () => number;
}

export interface WebSocketLike {
  readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onclose: ((ev: { code: number; reason?: string }) => void) | null;
}

export interface Subscription {
  channel: string;
  /** resolves once the server confirmed the subscription; rejects on `forbidden`, `bad_channel`, ... */
  ready: Promise<void>;
  unsubscribe(): void;
}

export interface ClientEvents {
  state: StateChange;
  welcome: Welcome;
  message: ChatMessage;
  /** the `since` offset was already trimmed from history, or belongs to another epoch (the history was lost): some messages may be missing; load them with `history()` */
  gap: { channel: string; epoch: string | null; offset: string | null; epochChanged: boolean };
  error: ChatError;
  /** a client subscribed to one of this client's channels (namespaces with join/leave) */
  join: { channel: string; info: ClientInfo };
  /** a client unsubscribed from one of this client's channels, or disconnected */
  leave: { channel: string; info: ClientInfo };
}

export declare class ChatError extends Error {
  /** protocol error code (`forbidden`, `unavailable`, ...) or a client one (`timeout`, `connection_lost`, `not_connected`, `closed`, `failed`, `unauthorized`, `connect_timeout`, `heartbeat_timeout`) */
  readonly code: string;
  constructor(code: string, message?: string);
}

export declare class ChatClient {
  constructor(options?: ChatClientOptions);
  readonly state: ConnectionState;
  readonly transport: Transport | null;
  readonly node: string | null;
  lastOffset(channel: string): string | null;
  /** epoch of the channel's history, from its last `subscribed` (sent back with `since` on resubscribe) */
  epoch(channel: string): string | null;
  on<K extends keyof ClientEvents>(type: K, listener: (value: ClientEvents[K]) => void): () => void;
  connect(): void;
  close(): void;
  subscribe<T = unknown>(channel: string, handler?: (msg: ChatMessage<T>) => void, options?: { since?: string; epoch?: string; last?: number; /** subscription token, or a function giving a fresh one for each (re)subscribe; WebSocket only */ token?: string | ((channel: string) => string | Promise<string>) }): Subscription;
  /** a page of the channel's history (WebSocket `history` frame, else `GET /api/history`) */
  history<T = unknown>(channel: string, options?: { limit?: number; before?: string; since?: string; reverse?: boolean; timeout?: number }): Promise<HistoryPage<T>>;
  /** who is subscribed to the channel (WebSocket only; `not_available` where presence is off) */
  presence(channel: string, options?: { timeout?: number }): Promise<PresenceAnswer>;
  /** how many clients and users are subscribed to the channel (WebSocket only) */
  presenceStats(channel: string, options?: { timeout?: number }): Promise<PresenceStats>;
  unsubscribe(channel: string): void;
  publish(channel: string, data: unknown, options?: { timeout?: number }): Promise<{ offset: string }>;
}

export declare const DEFAULT_RECONNECT: Readonly<Required<ReconnectPolicy>>;
export declare function backoffDelay(attempt: number, policy: Required<Omit<ReconnectPolicy, 'maxAttempts'>>, random: () => number): number;
export declare function compareOffsets(a: string, b: string): -1 | 0 | 1;
export declare function minOffset(offsets: Iterable<string | null | undefined>): string | null;

export declare class SseParser {
  constructor(onEvent: (ev: { event: string; data: string; id: string | null }) => void);
  push(chunk: string): void;
}
export declare function readEventStream(
  body: ReadableStream<Uint8Array>,
  onEvent: (ev: { event: string; data: string; id: string | null }) => void,
  /** called for every chunk read, keep-alive comments included */
  onChunk?: () => void,
): Promise<void>;
