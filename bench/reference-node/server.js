'use strict';
// The classic design that chat-node replaces, written as a fair baseline for the benchmark
// (docs/benchmarks.md): one Node.js process, the `ws` WebSocket server, `ioredis`, a Map of
// channel -> Set of sockets, and one Redis Pub/Sub subscription per channel (subscribed on the
// first local subscriber, unsubscribed after the last). It speaks the subset of protocol v1
// that the benchmark uses (welcome, subscribe/subscribed, unsubscribe, publish/ack, message,
// error), with the same flags as chat-node.
//
// Publishing is one Lua script: XADD to the channel's stream (the id is the offset), EXPIRE,
// then PUBLISH of the finished `message` frame, so each node forwards the Redis payload to its
// sockets as is: one Buffer per message, shared by every local subscriber, no JSON work per
// delivery. That is the best this design does; it is not a straw man.

const http = require('node:http');
const { WebSocketServer } = require('ws');
const { Redis } = require('ioredis');

function parseArgs(argv) {
  const opts = {
    listen: process.env.CHAT_LISTEN || '0.0.0.0:8080',
    redisUrl: process.env.CHAT_REDIS_URL || 'redis://127.0.0.1:6379',
    nodeId: process.env.CHAT_NODE_ID || require('node:os').hostname(),
    maxConnections: Number(process.env.CHAT_MAX_CONNECTIONS || 10000),
    heartbeatSeconds: 30,
    historySize: 1000,
    historyTtlSeconds: 86400,
    maxMessageBytes: 65536,
  };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`missing value for ${flag}`);
    switch (flag) {
      case '--listen': opts.listen = value; break;
      case '--redis-url': opts.redisUrl = value; break;
      case '--node-id': opts.nodeId = value; break;
      case '--max-connections': opts.maxConnections = Number(value); break;
      case '--heartbeat-interval': opts.heartbeatSeconds = parseInt(value, 10); break;
      case '--history-size': opts.historySize = Number(value); break;
      default: throw new Error(`unknown flag ${flag}`);
    }
  }
  return opts;
}

const opts = parseArgs(process.argv.slice(2));
const CHANNEL_RE = /^[A-Za-z0-9_\-.:/]{1,128}$/;
const PUBSUB_PREFIX = 'ref:ch:';
const streamKey = (channel) => `ref:history:${channel}`;

// KEYS[1] stream; ARGV: maxlen, ttl, pubsub channel, channel (JSON), from (JSON), ts, data (JSON)
const PUBLISH_LUA = `
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'from', ARGV[5], 'ts', ARGV[6], 'data', ARGV[7])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], '{"type":"message","channel":' .. ARGV[4] .. ',"offset":"' .. id ..
  '","from":' .. ARGV[5] .. ',"ts":' .. ARGV[6] .. ',"data":' .. ARGV[7] .. '}')
return id
`;

const redis = new Redis(opts.redisUrl, { maxRetriesPerRequest: 1 });
const sub = new Redis(opts.redisUrl);
redis.defineCommand('chatPublish', { numberOfKeys: 1, lua: PUBLISH_LUA });
redis.on('error', () => {});
sub.on('error', () => {});

/** channel -> Set of local sockets subscribed to it */
const channels = new Map();
/** channel -> promise of the Redis SUBSCRIBE for it */
const redisSubscriptions = new Map();

sub.on('messageBuffer', (rawChannel, frame) => {
  const sockets = channels.get(rawChannel.toString().slice(PUBSUB_PREFIX.length));
  if (!sockets) return;
  for (const ws of sockets) ws.send(frame, { binary: false });
});

function send(ws, obj) {
  ws.send(JSON.stringify(obj));
}

function sendError(ws, code, message, ref) {
  const frame = { type: 'error', code, message };
  if (ref !== undefined) frame.ref = ref;
  send(ws, frame);
}

async function subscribe(ws, msg) {
  const { channel, ref } = msg;
  if (typeof channel !== 'string' || !CHANNEL_RE.test(channel)) {
    return sendError(ws, 'bad_channel', 'invalid channel name', ref);
  }
  if (msg.since !== undefined) {
    return sendError(ws, 'bad_request', 'the reference server does not replay history', ref);
  }
  ws.subs.add(channel);
  let sockets = channels.get(channel);
  if (!sockets) {
    sockets = new Set();
    channels.set(channel, sockets);
  }
  sockets.add(ws);
  let subscribed = redisSubscriptions.get(channel);
  if (!subscribed) {
    subscribed = sub.subscribe(PUBSUB_PREFIX + channel);
    redisSubscriptions.set(channel, subscribed);
  }
  try {
    await subscribed;
    const newest = await redis.xrevrange(streamKey(channel), '+', '-', 'COUNT', 1);
    const offset = newest.length > 0 ? newest[0][0] : '0-0';
    send(ws, { type: 'subscribed', channel, offset, recovered: 0 });
  } catch (err) {
    sendError(ws, 'unavailable', 'redis unavailable', ref);
  }
}

function leave(ws, channel) {
  ws.subs.delete(channel);
  const sockets = channels.get(channel);
  if (!sockets) return;
  sockets.delete(ws);
  if (sockets.size === 0) {
    channels.delete(channel);
    redisSubscriptions.delete(channel);
    sub.unsubscribe(PUBSUB_PREFIX + channel).catch(() => {});
  }
}

function publish(ws, msg) {
  const { channel, ref } = msg;
  if (typeof channel !== 'string' || !CHANNEL_RE.test(channel)) {
    return sendError(ws, 'bad_channel', 'invalid channel name', ref);
  }
  if (msg.data === undefined) return sendError(ws, 'bad_request', 'publish needs data', ref);
  const data = JSON.stringify(msg.data);
  redis
    .chatPublish(streamKey(channel), opts.historySize, opts.historyTtlSeconds,
      PUBSUB_PREFIX + channel, JSON.stringify(channel), JSON.stringify(ws.clientId),
      Date.now(), data)
    .then((offset) => {
      const ack = { type: 'ack', offset };
      if (ref !== undefined) ack.ref = ref;
      send(ws, ack);
    })
    .catch(() => sendError(ws, 'unavailable', 'redis unavailable', ref));
}

function onFrame(ws, data, isBinary) {
  ws.isAlive = true;
  if (isBinary) return sendError(ws, 'bad_frame', 'binary frames are not accepted');
  let msg;
  try {
    msg = JSON.parse(data);
  } catch {
    return sendError(ws, 'bad_json', 'frame is not JSON');
  }
  if (msg === null || typeof msg !== 'object') return sendError(ws, 'bad_request', 'frame is not an object');
  switch (msg.type) {
    case 'subscribe': return subscribe(ws, msg);
    case 'unsubscribe':
      leave(ws, msg.channel);
      return send(ws, { type: 'unsubscribed', channel: msg.channel });
    case 'publish': return publish(ws, msg);
    default: return sendError(ws, 'unknown_type', 'unknown frame type', msg.ref);
  }
}

const wss = new WebSocketServer({
  noServer: true,
  perMessageDeflate: false,
  maxPayload: opts.maxMessageBytes,
});
let nextClient = 0;

wss.on('connection', (ws) => {
  ws.clientId = `${opts.nodeId}-${nextClient++}`;
  ws.subs = new Set();
  ws.isAlive = true;
  ws.on('message', (data, isBinary) => onFrame(ws, data, isBinary));
  ws.on('pong', () => { ws.isAlive = true; });
  ws.on('error', () => {});
  ws.on('close', () => {
    for (const channel of ws.subs) leave(ws, channel);
  });
  send(ws, { type: 'welcome', node: opts.nodeId, client: ws.clientId, heartbeat: opts.heartbeatSeconds });
});

// The `ws` README's heartbeat: ping everyone each interval, drop who did not answer the last.
const heartbeat = setInterval(() => {
  for (const ws of wss.clients) {
    if (!ws.isAlive) { ws.terminate(); continue; }
    ws.isAlive = false;
    ws.ping();
  }
}, opts.heartbeatSeconds * 1000);

let redisReady = 0;
redis.on('ready', () => { redisReady |= 1; });
sub.on('ready', () => { redisReady |= 2; });

const server = http.createServer((req, res) => {
  if (req.url === '/healthz') {
    const ok = redisReady === 3;
    res.writeHead(ok ? 200 : 503, { 'content-type': 'text/plain' });
    res.end(ok ? 'ok\n' : 'redis not ready\n');
    return;
  }
  res.writeHead(404);
  res.end();
});

server.on('upgrade', (req, socket, head) => {
  socket.on('error', () => {});
  if (!req.url.startsWith('/ws')) {
    socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
    return;
  }
  // handleUpgrade completes synchronously here (no verifyClient, no compression), so
  // wss.clients.size counts every accepted connection.
  if (wss.clients.size >= opts.maxConnections) {
    socket.end('HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
});
server.on('error', (err) => console.error(`server error: ${err.message}`));

const lastColon = opts.listen.lastIndexOf(':');
const host = opts.listen.slice(0, lastColon);
const port = Number(opts.listen.slice(lastColon + 1));
server.listen({ host, port, backlog: 4096 }, () => {
  console.error(`reference server ${opts.nodeId} listening on ${host}:${port}, max ${opts.maxConnections} connections`);
});

process.on('SIGTERM', () => {
  clearInterval(heartbeat);
  server.close();
  for (const ws of wss.clients) ws.close(1001, 'server shutting down');
  Promise.allSettled([redis.quit(), sub.quit()]).finally(() => process.exit(0));
});
