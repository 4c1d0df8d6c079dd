// A Server-Sent Events reader on top of fetch().
//
// Why not EventSource: it cannot send an Authorization header and never tells why it failed
// (a 401 looks like any network error), so the client could not tell "refresh the token" from
// "the node is gone". fetch() gives both, and a ReadableStream of the body.

/**
 * Incremental parser for the text/event-stream format (WHATWG HTML, "server-sent events").
 * Feed it decoded text chunks; it calls `onEvent({event, data, id})` per dispatched event.
 */
export class SseParser {
  #buffer = '';
  #event = '';
  #data = [];
  #id = null;
  #onEvent;

  /** @param {(ev: {event: string, data: string, id: string | null}) => void} onEvent */
  constructor(onEvent) {
    this.#onEvent = onEvent;
  }

  /** @param {string} chunk */
  push(chunk) {
    this.#buffer += chunk;
    for (;;) {
      const m = /\r\n|\r|\n/.exec(this.#buffer);
      // A lone trailing "\r" may be the first half of "\r\n": wait for the next chunk.
      if (!m || (m[0] === '\r' && m.index === this.#buffer.length - 1)) return;
      const line = this.#buffer.slice(0, m.index);
      this.#buffer = this.#buffer.slice(m.index + m[0].length);
      this.#line(line);
    }
  }

  #line(line) {
    if (line === '') {
      if (this.#data.length > 0) {
        this.#onEvent({ event: this.#event || 'message', data: this.#data.join('\n'), id: this.#id });
      }
      this.#event = '';
      this.#data = [];
      return;
    }
    if (line.startsWith(':')) return; // comment / keep-alive
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') this.#event = value;
    else if (field === 'data') this.#data.push(value);
    else if (field === 'id' && !value.includes('\0')) this.#id = value;
  }
}

/**
 * Reads a fetch() Response body as an event stream until it ends or is aborted.
 * `onChunk` (optional) is called for every chunk read, keep-alive comments included, so a
 * caller can tell a quiet stream from a stalled one.
 * @param {ReadableStream<Uint8Array>} body
 * @param {(ev: {event: string, data: string, id: string | null}) => void} onEvent
 * @param {() => void} [onChunk]
 */
export async function readEventStream(body, onEvent, onChunk) {
  const parser = new SseParser(onEvent);
  const decoder = new TextDecoder();
  const reader = body.getReader();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      onChunk?.();
      parser.push(decoder.decode(value, { stream: true }));
    }
  } finally {
    reader.releaseLock?.();
  }
}
