// The ChatCluster the browser tests run against: real pods on the test harness's real node, behind
// Traefik. The tests are started by the e2e suite (tests/e2e, `browser.rs`), which applies
// examples/basic.yaml into a namespace of its own, waits until it is Ready and passes:
//   CHATCLUSTER_DEMO_URL    the demo page as users open it (Traefik, e.g. http://127.0.0.1)
//   CHATCLUSTER_NAMESPACE   the ChatCluster's namespace; CHATCLUSTER_CHAT its name (demo)
//   CHATCLUSTER_KUBECTL     kubectl of the cluster's release; KUBECONFIG its admin kubeconfig
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { waitFor } from './wait.js';

export { waitFor };

const run = promisify(execFile);

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: the browser tests run from the e2e suite (cargo test -p e2e-tests --test real_pods browser)`);
  }
  return value;
}

export const DEMO_URL = required('CHATCLUSTER_DEMO_URL').replace(/\/$/, '');
export const NAMESPACE = required('CHATCLUSTER_NAMESPACE');
export const CHAT = process.env.CHATCLUSTER_CHAT ?? 'demo';
const NODE_SELECTOR = `app.kubernetes.io/instance=${CHAT},app.kubernetes.io/name=chat-node`;

/** kubectl in the ChatCluster's namespace; resolves with stdout. */
export async function kubectl(...args) {
  const { stdout } = await run(process.env.CHATCLUSTER_KUBECTL ?? 'kubectl', ['-n', NAMESPACE, ...args], {
    env: process.env,
    maxBuffer: 16 * 1024 * 1024,
  });
  return stdout;
}

/** The chat-node pods: name (the node id pages show), IP, whether Ready, whether terminating. */
export async function chatNodes() {
  const pods = JSON.parse(await kubectl('get', 'pods', '-l', NODE_SELECTOR, '-o', 'json'));
  return pods.items.map((p) => ({
    name: p.metadata.name,
    ip: p.status.podIP,
    terminating: Boolean(p.metadata.deletionTimestamp),
    ready: (p.status.conditions ?? []).some((c) => c.type === 'Ready' && c.status === 'True'),
  }));
}

/** Waits until `count` chat-node pods run, all Ready, none terminating. */
export function waitForNodes(count, timeoutMs = 120000) {
  return waitFor(`${count} ready chat-node pods`, async () => {
    const nodes = await chatNodes();
    return nodes.length === count && nodes.every((n) => n.ready && !n.terminating) && nodes;
  }, timeoutMs);
}

/** The ChatCluster's condition `type`, or undefined. */
export async function chatCondition(type) {
  const chat = JSON.parse(await kubectl('get', 'chatcluster', CHAT, '-o', 'json'));
  return (chat.status?.conditions ?? []).find((c) => c.type === type);
}
