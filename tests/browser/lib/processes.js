// Real servers for the browser tests, on loopback and free ports: redis-server, chat-node and
// nginx. Every process started here is killed when the test process exits, even on failure.
import { spawn } from 'node:child_process';
import { createServer, connect } from 'node:net';
import { mkdtempSync, rmSync, writeFileSync, mkdirSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

const live = new Set();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

/** A free TCP port on 127.0.0.1 (bound and released; the OS does not hand it out again soon). */
export function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

/** Polls `check` every 50 ms until it returns truthy or `timeoutMs` passes. */
export async function waitFor(what, check, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await sleep(50);
  }
}

export function tempDir(prefix) {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  chmodSync(dir, 0o755); // nginx workers run as nobody
  return dir;
}

/** A child process whose output goes to a log file in `dir`; `stop()` sends SIGTERM and waits. */
class Proc {
  constructor(name, cmd, args, env, logFile) {
    this.name = name;
    this.logFile = logFile;
    this.child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    this.exited = new Promise((res) => this.child.once('exit', (code, signal) => res({ code, signal })));
    this.log = [];
    const keep = (chunk) => {
      this.log.push(chunk.toString());
      if (this.log.length > 400) this.log.shift();
    };
    this.child.stdout.on('data', keep);
    this.child.stderr.on('data', keep);
    this.child.on('error', (err) => this.log.push(`spawn error: ${err.message}`));
    live.add(this.child);
    this.exited.then(() => live.delete(this.child));
  }
  get running() {
    return this.child.exitCode === null && this.child.signalCode === null;
  }
  /** SIGTERM, wait up to `graceMs`, then SIGKILL. Resolves with the exit status. */
  async stop(graceMs = 10000) {
    if (!this.running) return this.exited;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    const status = await this.exited;
    clearTimeout(timer);
    return status;
  }
  output() {
    return this.log.join('');
  }
}

function redisPing(port) {
  return new Promise((res) => {
    const sock = connect(port, '127.0.0.1');
    sock.setTimeout(1000);
    sock.once('connect', () => sock.write('PING\r\n'));
    sock.once('data', (d) => {
      sock.destroy();
      res(d.toString().startsWith('+PONG'));
    });
    sock.once('error', () => res(false));
    sock.once('timeout', () => {
      sock.destroy();
      res(false);
    });
  });
}

/** redis-server on a free loopback port, with an append-only file so a restart keeps history. */
export class Redis {
  static async start() {
    const r = new Redis();
    r.port = await freePort();
    r.dir = tempDir('chat-redis-');
    await r.#spawn();
    return r;
  }
  get url() {
    return `redis://127.0.0.1:${this.port}`;
  }
  async #spawn() {
    const args = ['--port', String(this.port), '--bind', '127.0.0.1', '--dir', this.dir, '--save', '', '--appendonly', 'yes'];
    this.proc = new Proc('redis', 'redis-server', args, {});
    await waitFor(`redis-server on ${this.port}`, async () => {
      if (!this.proc.running) throw new Error(`redis-server exited: ${this.proc.output()}`);
      return redisPing(this.port);
    });
  }
  async restart() {
    await this.proc.stop();
    await this.#spawn();
  }
  async stop() {
    await this.proc?.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export function chatNodeBin() {
  return process.env.CHAT_NODE_BIN ?? join(REPO_ROOT, 'target/debug/chat-node');
}

/** One chat-node, configured through its CHAT_* env like a pod (see INTERFACES.md). */
export class ChatNode {
  static async start(id, redisUrl, env = {}) {
    const n = new ChatNode();
    n.id = id;
    n.port = await freePort();
    n.adminPort = await freePort();
    n.env = {
      CHAT_LISTEN: `127.0.0.1:${n.port}`,
      CHAT_ADMIN_LISTEN: `127.0.0.1:${n.adminPort}`,
      CHAT_REDIS_URL: redisUrl,
      CHAT_NODE_ID: id,
      CHAT_DRAIN_TIMEOUT: '1s',
      CHAT_HEARTBEAT_INTERVAL: '5s',
      CHAT_LOG_FORMAT: 'text',
      RUST_LOG: 'info',
      ...env,
    };
    await n.start();
    return n;
  }
  get httpUrl() {
    return `http://127.0.0.1:${this.port}`;
  }
  async start() {
    this.proc = new Proc(this.id, chatNodeBin(), [], this.env);
    await this.waitReady();
  }
  async ready() {
    if (!this.proc.running) throw new Error(`${this.id} exited: ${this.proc.output()}`);
    const res = await fetch(`http://127.0.0.1:${this.adminPort}/readyz`);
    return res.status === 200;
  }
  waitReady(timeoutMs = 30000) {
    return waitFor(`${this.id} /readyz`, () => this.ready(), timeoutMs);
  }
  async stop() {
    return this.proc?.stop();
  }
}

/**
 * nginx as a sticky-cookie reverse proxy in front of `upstreams` (host:port strings).
 * Stickiness: the cookie holds a random key (set on the first response); the upstream is picked by
 * a consistent hash of it, so a browser stays on one node, and when that node fails or refuses
 * (502/503 while draining) nginx moves the request to the next one.
 */
export class Nginx {
  static async start(upstreams, { cookie = 'route' } = {}) {
    const n = new Nginx();
    n.port = await freePort();
    n.dir = tempDir('chat-nginx-');
    mkdirSync(join(n.dir, 'tmp'), { mode: 0o777 });
    chmodSync(join(n.dir, 'tmp'), 0o777);
    writeFileSync(join(n.dir, 'nginx.conf'), nginxConfig(n.dir, n.port, upstreams, cookie));
    const bin = process.env.CHATCLUSTER_NGINX ?? '/usr/sbin/nginx';
    n.proc = new Proc('nginx', bin, ['-p', n.dir, '-c', join(n.dir, 'nginx.conf'), '-e', 'stderr', '-g', 'daemon off;'], {});
    await waitFor(`nginx on ${n.port}`, async () => {
      if (!n.proc.running) throw new Error(`nginx exited: ${n.proc.output()}`);
      const res = await fetch(`http://127.0.0.1:${n.port}/nginx-health`);
      return res.status === 200;
    });
    return n;
  }
  get url() {
    return `http://127.0.0.1:${this.port}`;
  }
  async stop() {
    await this.proc?.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

function nginxConfig(dir, port, upstreams, cookie) {
  const tmp = join(dir, 'tmp');
  const proxyDirectives = `      proxy_pass http://chat_nodes;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
      proxy_buffering off;
      proxy_next_upstream error timeout http_502 http_503;
      proxy_connect_timeout 2s;
      add_header Set-Cookie $route_set_cookie always;`;
  return `worker_processes 1;
pid ${join(dir, 'nginx.pid')};
error_log stderr warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${tmp}/body;
  proxy_temp_path ${tmp}/proxy;
  fastcgi_temp_path ${tmp}/fastcgi;
  uwsgi_temp_path ${tmp}/uwsgi;
  scgi_temp_path ${tmp}/scgi;
  map $http_upgrade $connection_upgrade { default upgrade; '' close; }
  map $cookie_${cookie} $route_key { '' $request_id; default $cookie_${cookie}; }
  map $cookie_${cookie} $route_set_cookie { '' '${cookie}=$request_id; Path=/; Max-Age=172800; HttpOnly; SameSite=Lax'; default ''; }
  upstream chat_nodes {
    hash $route_key consistent;
${upstreams.map((u) => `    server ${u} max_fails=1 fail_timeout=5s;`).join('\n')}
  }
  server {
    listen 127.0.0.1:${port};
    location = /nginx-health { return 200 'ok'; }
    # stands in for a corporate proxy that refuses WebSocket upgrades (clients with this cookie)
    location = /ws {
      if ($cookie_block_websocket = "1") { return 403; }
${proxyDirectives}
    }
    location / {
${proxyDirectives}
    }
  }
}
`;
}
