// @chatcluster/client: the browser client for chat-node. See docs/client.md.
export { ChatClient, ChatError } from './client.js';
export { backoffDelay, DEFAULT_RECONNECT } from './backoff.js';
export { compareOffsets, minOffset } from './offsets.js';
export { SseParser, readEventStream } from './sse.js';
