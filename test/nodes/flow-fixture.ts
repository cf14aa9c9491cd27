// A Node-RED flow of the six pipeline nodes and a Catch node, loaded into the test helper.
import * as path from 'node:path';
import helper from 'node-red-node-test-helper';

helper.init(require.resolve('node-red'));

export { helper };

const nodesDir = path.resolve(__dirname, '../../nodes');
export const NODE_MODULES = ['host', 'enumerate', 'classify', 'prepare', 'snapshot', 'post-snapshot', 'copy'].map((name) =>
  require(path.join(nodesDir, name, `${name}.js`)),
);
export const CATCH = require(require.resolve('@node-red/nodes/core/common/25-catch.js'));

export interface FlowOptions {
  socketDir: string;
  repository: string;
  journalDir: string;
  fallback?: string;
  /** classify's policy for unreachable VMs (default: the node's default, fail) */
  unreachable?: string;
  hostExtra?: Record<string, unknown>;
  /** wire each stage to the next (default) or only to the helper node "out-<stage>" */
  wired?: boolean;
  /**
   * The host config node's id (default "host"). The same id in the next load is the same host node
   * redeployed: it reports the sets the previous one ended on closing (a test that leaves a set in
   * flight), so tests that must not hear of each other's sets use their own.
   */
  hostId?: string;
}

export const STAGE_NODES = ['enumerate', 'classify', 'prepare', 'snapshot', 'post-snapshot', 'copy'] as const;

/** Every stage node sends to the next and to a helper "out-<stage>"; a Catch sends to "caught". */
export function pipelineFlow(o: FlowOptions): object[] {
  const wired = o.wired ?? true;
  const flow: object[] = [
    {
      id: o.hostId ?? 'host',
      type: 'vmbackup-host',
      hostName: 'testhost',
      provider: 'qemu',
      socketDir: o.socketDir,
      repository: o.repository,
      journalDir: o.journalDir,
      freezeTimeout: 10,
      ...o.hostExtra,
    },
    { id: 'catch-all', type: 'catch', z: 'f1', scope: null, uncaught: false, x: 0, y: 0, wires: [['caught']] },
    { id: 'caught', type: 'helper', z: 'f1', x: 0, y: 0 },
    { id: 'progress', type: 'helper', z: 'f1', x: 0, y: 0 },
    { id: 'f1', type: 'tab', label: 'test' },
  ];
  STAGE_NODES.forEach((stage, i) => {
    const next = STAGE_NODES[i + 1];
    const out = [`out-${stage}`, ...(wired && next ? [next] : [])];
    const node: Record<string, unknown> = {
      id: stage,
      type: `vmbackup-${stage}`,
      z: 'f1',
      host: o.hostId ?? 'host',
      x: 0,
      y: 0,
      wires: [out],
    };
    if (stage === 'classify') node.fallback = o.fallback ?? 'checkpoint';
    if (stage === 'classify' && o.unreachable) node.unreachable = o.unreachable;
    if (stage === 'copy') Object.assign(node, { compress: false, concurrency: 2, progressInterval: 50, wires: [out, ['progress']] });
    flow.push(node, { id: `out-${stage}`, type: 'helper', z: 'f1', x: 0, y: 0 });
  });
  return flow;
}

/** Resolve with the next message a helper node receives. */
export function nextMessage(id: string, timeoutMs = 60_000): Promise<any> {
  const node = helper.getNode(id);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no message at ${id} within ${timeoutMs} ms`)), timeoutMs);
    timer.unref(); // a waiter that is never needed must not keep mocha alive
    node.once('input', (msg: unknown) => {
      clearTimeout(timer);
      resolve(msg);
    });
  });
}

/** Send into a node and expect the Catch node to get the error. */
export async function expectRefusal(nodeId: string, payload: unknown): Promise<{ error: { message: string }; summary: any }> {
  const caught = nextMessage('caught', 20_000);
  helper.getNode(nodeId).receive({ payload });
  return caught;
}
