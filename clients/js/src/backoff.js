// Reconnect delays: exponential backoff with "full jitter".
//
// Full jitter (a uniformly random delay between 0 and the exponential ceiling) spreads a crowd
// of clients that lost the same node over the whole window, instead of sending them back in
// synchronized waves. See https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/

/** Default reconnect policy; every field can be overridden through `ChatClientOptions.reconnect`. */
export const DEFAULT_RECONNECT = Object.freeze({
  /** ceiling of the first retry, in ms */
  initialDelay: 500,
  /** the ceiling never grows past this, in ms */
  maxDelay: 15000,
  /** growth of the ceiling per failed attempt */
  factor: 2,
  /** consecutive failed attempts before the client gives up (state `failed`) */
  maxAttempts: 12,
});

/**
 * The delay before retry number `attempt` (0 for the first retry).
 * @param {number} attempt
 * @param {{initialDelay:number,maxDelay:number,factor:number}} policy
 * @param {() => number} random a function returning a number in [0, 1)
 * @returns {number} milliseconds, an integer in [0, min(maxDelay, initialDelay * factor^attempt))
 */
export function backoffDelay(attempt, policy, random) {
  const ceiling = Math.min(policy.maxDelay, policy.initialDelay * policy.factor ** attempt);
  return Math.floor(random() * ceiling);
}
