// The restore side's nodes in a flow: a host node on the lab's sockets and repository, one node
// of the given type wired to "out" and "progress", and a Catch to "caught".
import * as path from 'node:path';
import { CATCH, helper } from '../nodes/flow-fixture';

const nodesDir = path.resolve(__dirname, '../../nodes');
export const ACTION_MODULES = ['host', 'restore', 'file-restore', 'boot-test']
  .map((name) => path.join(nodesDir, name, `${name}.js`))
  .filter((file) => {
    try {
      require.resolve(file);
      return true;
    } catch {
      return false;
    }
  })
  .map((file) => require(file));

export interface ActionFlow {
  socketDir: string;
  repository: string;
  journalDir: string;
  provider?: string;
  hostExtra?: Record<string, unknown>;
}

export async function loadActionNode(type: string, settings: Record<string, unknown>, o: ActionFlow): Promise<void> {
  await helper.load([...ACTION_MODULES, CATCH], [
    { id: 'f1', type: 'tab', label: 'restore' },
    {
      id: 'host',
      type: 'vmbackup-host',
      hostName: 'lab',
      provider: o.provider ?? 'qemu',
      socketDir: o.socketDir,
      repository: o.repository,
      journalDir: o.journalDir,
      ...o.hostExtra,
    },
    { id: 'node', type, z: 'f1', host: 'host', ...settings, wires: [['out'], ['progress']] },
    { id: 'out', type: 'helper', z: 'f1' },
    { id: 'progress', type: 'helper', z: 'f1' },
    { id: 'catch-all', type: 'catch', z: 'f1', scope: null, uncaught: false, wires: [['caught']] },
    { id: 'caught', type: 'helper', z: 'f1' },
  ] as any);
  listen();
}

/** What reached "out" and "caught" since the flow was loaded (one listener each: Node-RED skips a
 * second one-shot input listener when the first removes itself, so none is left dangling). */
const received: { out: any[]; caught: any[] } = { out: [], caught: [] };

function listen(): void {
  received.out = [];
  received.caught = [];
  helper.getNode('out').on('input', (m: any) => received.out.push(m));
  helper.getNode('caught').on('input', (m: any) => received.caught.push(m));
}

async function next(timeoutMs: number): Promise<{ out?: any; caught?: any }> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (received.out.length) return { out: received.out.shift() };
    if (received.caught.length) return { caught: received.caught.shift() };
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`no message at out or caught within ${timeoutMs} ms`);
}

/** Send a message into the node: its output, or the Catch node's message turned into a rejection. */
export async function actOn(payload: unknown, timeoutMs = 300_000): Promise<any> {
  helper.getNode('node').receive({ payload });
  const r = await next(timeoutMs);
  if (r.caught) throw Object.assign(new Error(r.caught.error?.message ?? 'caught'), { summary: r.caught.summary });
  return r.out;
}

/** Send a message that must be refused: the Catch node's message. */
export async function refused(payload: unknown, timeoutMs = 60_000): Promise<{ error: { message: string }; summary: any }> {
  helper.getNode('node').receive({ payload });
  const r = await next(timeoutMs);
  if (r.out) throw new Error(`not refused: ${JSON.stringify(r.out.payload).slice(0, 300)}`);
  return r.caught;
}

/** Register the per-case hooks of a restore suite (call inside describe): a test server around each case. */
export function serverPerCase(): void {
  beforeEach((done) => {
    helper.startServer(done);
  });
  afterEach(async () => {
    await helper.unload();
    await new Promise<void>((resolve) => helper.stopServer(() => resolve()));
  });
}
