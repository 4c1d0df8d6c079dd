// Message offsets: the id of a message in its channel's history, `<ms>-<seq>` (a Redis Stream
// id). They order the messages of one channel, which is what lets the client drop a message it
// has already shown when a reconnect replays history with `since`.

/** @param {string} offset @returns {[bigint, bigint] | null} */
function parse(offset) {
  const m = /^(\d+)-(\d+)$/.exec(offset);
  return m ? [BigInt(m[1]), BigInt(m[2])] : null;
}

/**
 * Compares two offsets of the same channel.
 * Offsets that are not `<ms>-<seq>` are compared as unsigned decimal numbers by length, then
 * as text, so a server with plain sequence numbers still orders correctly.
 * @param {string} a
 * @param {string} b
 * @returns {-1 | 0 | 1}
 */
export function compareOffsets(a, b) {
  const pa = parse(a);
  const pb = parse(b);
  if (pa && pb) {
    if (pa[0] !== pb[0]) return pa[0] < pb[0] ? -1 : 1;
    if (pa[1] !== pb[1]) return pa[1] < pb[1] ? -1 : 1;
    return 0;
  }
  if (a.length !== b.length) return a.length < b.length ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * The smallest of the given offsets, ignoring null/undefined; null when there is none.
 * @param {Iterable<string | null | undefined>} offsets
 * @returns {string | null}
 */
export function minOffset(offsets) {
  let min = null;
  for (const o of offsets) {
    if (o == null) continue;
    if (min === null || compareOffsets(o, min) < 0) min = o;
  }
  return min;
}
