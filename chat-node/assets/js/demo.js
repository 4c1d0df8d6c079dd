// The demo chat page: rooms, who said what, and the connection's state, on top of the
// browser client that chat-node serves at /client/. Page URL parameters (all optional):
//   token=<jwt>           connect with this token
//   name=<display name>   preset the name field
//   room=<room>           open this room first
//   rooms=a,b,c           the room list (default lobby,random,ops)
//   initialDelay, maxDelay, maxAttempts, drainDelay   reconnect tuning in ms (tests use small ones)
//   connectTimeout, pollWait                          ms: handshake/first-byte limit, long-poll wait
//   transports=websocket,sse,longpoll                 the transports allowed (all by default), e.g.
//                                                     `longpoll` alone forces long-polling
import { ChatClient } from '/client/index.js';

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const numberParam = (k) => (params.has(k) ? Number(params.get(k)) : undefined);

const sessionId = sessionStorage.getItem('chat-sid') ?? Math.random().toString(36).slice(2, 10);
sessionStorage.setItem('chat-sid', sessionId);

const rooms = new Map(); // room -> {messages: [], unread: number, subscription}
const online = new Map(); // room -> Map(client id -> {client, user, conn_info}), rooms with presence only
let current = null;

const client = new ChatClient({
  token: params.get('token') ?? undefined,
  getToken: askForToken,
  reconnect: {
    ...(numberParam('initialDelay') !== undefined && { initialDelay: numberParam('initialDelay') }),
    ...(numberParam('maxDelay') !== undefined && { maxDelay: numberParam('maxDelay') }),
    ...(numberParam('maxAttempts') !== undefined && { maxAttempts: numberParam('maxAttempts') }),
  },
  ...(numberParam('drainDelay') !== undefined && { drainDelay: numberParam('drainDelay') }),
  ...(numberParam('connectTimeout') !== undefined && { connectTimeout: numberParam('connectTimeout') }),
  ...(numberParam('pollWait') !== undefined && { pollWait: numberParam('pollWait') }),
  ...(params.has('transports') && { transports: params.get('transports').split(',').filter(Boolean) }),
});

// ---- connection state ------------------------------------------------------------------

client.on('state', (s) => {
  $('conn').dataset.state = s.state;
  const label = {
    connecting: 'connecting…',
    open: 'connected',
    reconnecting: s.delay != null ? `reconnecting in ${(s.delay / 1000).toFixed(1)}s (attempt ${s.attempt})` : 'reconnecting…',
    failed: 'disconnected (gave up)',
    closed: 'closed',
  }[s.state] ?? s.state;
  $('conn-state').textContent = label;
  $('conn-node').textContent = s.node ? `node ${s.node}` : '';
  $('conn-transport').textContent = { sse: 'SSE', longpoll: 'long-polling' }[s.transport] ?? '';
  if (s.state === 'open') notice('');
  // (re)connected: the subscribes went out first, so presence answers include this client
  if (s.state === 'open' && s.transport === 'websocket') for (const room of rooms.keys()) loadOnline(room);
  if (s.state === 'failed') notice('Connection lost. Reload the page to try again.');
});
let myClient = null; // this connection's id, as presence lists it
client.on('welcome', (w) => {
  myClient = w.client;
  $('conn-node').textContent = `node ${w.node}`;
});
client.on('gap', ({ channel }) => {
  const room = roomOf(channel);
  if (room) addSystem(room, 'Some older messages are no longer in history.');
});
client.on('join', ({ channel, info }) => {
  const room = roomOf(channel);
  if (!online.has(room)) return;
  online.get(room).set(info.client, info);
  if (room === current) renderOnline();
});
client.on('leave', ({ channel, info }) => {
  const room = roomOf(channel);
  if (!online.get(room)?.delete(info.client)) return;
  if (room === current) renderOnline();
});
client.on('error', (e) => console.warn('chat:', e.code, e.message));

async function askForToken(reason) {
  const dialog = $('token-dialog');
  if (!dialog.showModal) return null;
  dialog.querySelector('p').textContent = `The server refused the token (${reason}). Paste a fresh one:`;
  dialog.showModal();
  await new Promise((resolve) => dialog.addEventListener('close', resolve, { once: true }));
  return dialog.returnValue === 'ok' ? $('token-input').value.trim() || null : null;
}

// ---- rooms -----------------------------------------------------------------------------

const channelOf = (room) => `chat:${room}`;
const roomOf = (channel) => (channel.startsWith('chat:') ? channel.slice(5) : null);

function joinRoom(room) {
  if (rooms.has(room)) return;
  const entry = { messages: [], unread: 0, subscription: null };
  rooms.set(room, entry);
  // a room opens with its last 50 messages (later resubscribes recover from their offset)
  entry.subscription = client.subscribe(channelOf(room), (msg) => onMessage(room, msg), { last: 50 });
  entry.subscription.ready.catch((e) => {
    if (e.code !== 'unsubscribed') addSystem(room, `Cannot join: ${e.code}`);
  });
  renderRooms();
  if (client.transport === 'websocket') loadOnline(room);
}

function selectRoom(room) {
  joinRoom(room);
  current = room;
  rooms.get(room).unread = 0;
  $('room-title').textContent = `# ${room}`;
  renderRooms();
  renderMessages();
  renderOnline();
  const url = new URL(location.href);
  url.searchParams.set('room', room);
  history.replaceState(null, '', url);
}

function renderRooms() {
  const ul = $('rooms');
  ul.replaceChildren(
    ...[...rooms].map(([room, entry]) => {
      const li = document.createElement('li');
      li.dataset.room = room;
      li.setAttribute('aria-current', String(room === current));
      const name = document.createElement('span');
      name.textContent = `# ${room}`;
      const unread = document.createElement('span');
      unread.className = 'unread';
      unread.textContent = entry.unread ? String(entry.unread) : '';
      li.append(name, unread);
      li.addEventListener('click', () => selectRoom(room));
      return li;
    }),
  );
}

// ---- who is online (the server's presence; hidden where the room's namespace has none) ----

async function loadOnline(room) {
  try {
    const answer = await client.presence(channelOf(room));
    online.set(room, new Map(answer.clients.map((c) => [c.client, c])));
  } catch {
    online.delete(room); // not_available (presence off), not connected, ...
  }
  if (room === current) renderOnline();
}

function renderOnline() {
  const p = $('online');
  const clients = online.get(current);
  p.hidden = !clients;
  if (!clients) return;
  // one name per user, however many tabs they have open
  const names = new Map();
  // (without a token the user is the connection id: shown short, like the default name)
  for (const c of clients.values()) {
    const guest = c.client === myClient ? `${$('name').value.trim() || 'you'} (you)` : `guest-${c.client.slice(0, 4)}`;
    names.set(c.user, c.conn_info?.name ?? (c.user === c.client ? guest : c.user));
  }
  const who = [...names.values()].sort().map((name) => {
    const span = document.createElement('span');
    span.className = 'who';
    span.textContent = name;
    return span;
  });
  const parts = [document.createTextNode(`Online (${names.size}): `)];
  who.forEach((span, i) => parts.push(...(i ? [document.createTextNode(', '), span] : [span])));
  p.replaceChildren(...parts);
}

// ---- messages --------------------------------------------------------------------------

function onMessage(room, msg) {
  const entry = rooms.get(room);
  if (!entry) return;
  entry.messages.push(msg);
  if (room === current) appendMessage(msg);
  else {
    entry.unread++;
    renderRooms();
  }
}

function addSystem(room, text) {
  onMessage(room, { system: true, data: { text }, ts: Date.now() });
}

function messageItem(msg) {
  const li = document.createElement('li');
  if (msg.system) {
    li.className = 'system';
    li.textContent = msg.data.text;
    return li;
  }
  const data = msg.data && typeof msg.data === 'object' ? msg.data : { text: String(msg.data) };
  li.dataset.offset = msg.offset;
  li.dataset.testid = 'message';
  if (data.sid === sessionId) li.classList.add('mine');
  const meta = document.createElement('div');
  meta.className = 'meta';
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = data.name || msg.from || 'anonymous';
  const when = document.createElement('time');
  when.dateTime = new Date(msg.ts).toISOString();
  when.textContent = new Date(msg.ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  meta.append(who, when);
  const text = document.createElement('div');
  text.className = 'text';
  text.textContent = data.text ?? JSON.stringify(data);
  li.append(meta, text);
  return li;
}

function appendMessage(msg) {
  const ol = $('messages');
  const atBottom = ol.scrollTop + ol.clientHeight >= ol.scrollHeight - 4;
  ol.append(messageItem(msg));
  if (atBottom) ol.scrollTop = ol.scrollHeight;
}

function renderMessages() {
  const ol = $('messages');
  ol.replaceChildren(...rooms.get(current).messages.map(messageItem));
  ol.scrollTop = ol.scrollHeight;
}

function notice(text) {
  $('notice').textContent = text;
  $('notice').hidden = !text;
}

// ---- forms -----------------------------------------------------------------------------

$('name').value = params.get('name') ?? localStorage.getItem('chat-name') ?? `guest-${sessionId.slice(0, 4)}`;
$('name').addEventListener('change', () => localStorage.setItem('chat-name', $('name').value));

$('composer').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const input = $('text');
  const text = input.value.trim();
  if (!text || !current) return;
  input.value = '';
  try {
    await client.publish(channelOf(current), { text, name: $('name').value.trim(), sid: sessionId });
    notice('');
  } catch (e) {
    notice(`Not sent (${e.code}): ${text}`);
  }
});

$('add-room').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const input = $('new-room');
  const room = input.value.trim();
  if (!room || !input.checkValidity()) return;
  input.value = '';
  selectRoom(room);
});

// ---- start -----------------------------------------------------------------------------

const roomList = (params.get('rooms') ?? 'lobby,random,ops').split(',').filter(Boolean);
for (const room of roomList) joinRoom(room);
selectRoom(params.get('room') ?? roomList[0] ?? 'lobby');
client.connect();

// for tests and the curious: the client and what each room has shown
window.chatDemo = {
  client,
  sessionId,
  shown: (room) => (rooms.get(room)?.messages ?? []).filter((m) => !m.system).map((m) => m.data),
  online: (room) => [...(online.get(room)?.values() ?? [])],
};
