// A real `node-red` process (the repository's devDependency, v4) with this package linked into
// its user directory the way `npm install <folder>` links it, for the cases that need the process
// itself: SIGKILL and restart, full and partial redeploys through the admin API.
import { mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { NodeRed, REPO_ROOT, type FlowNode } from '../../e2e/harness';
import { clearHookLog, waitAgent } from './guest';
import { sleep, type VmRef } from './world';

export class RealNodeRed {
  nr: NodeRed | undefined;
  private constructor(readonly userDir: string) {}

  static create(): RealNodeRed {
    const userDir = mkdtempSync(path.join(os.tmpdir(), 'vmb-faults-nr-'));
    writeFileSync(
      path.join(userDir, 'package.json'),
      JSON.stringify(
        { name: 'faults', version: '0.0.1', private: true, dependencies: { '@vm-backup/node-red-vm-backup': `file:${REPO_ROOT}` } },
        null,
        2,
      ),
    );
    mkdirSync(path.join(userDir, 'node_modules', '@vm-backup'), { recursive: true });
    symlinkSync(REPO_ROOT, path.join(userDir, 'node_modules', '@vm-backup', 'node-red-vm-backup'), 'dir');
    return new RealNodeRed(userDir);
  }

  async start(): Promise<void> {
    this.nr = await NodeRed.start(this.userDir);
  }

  /** SIGKILL: no close handler runs, nothing is undone by the process itself. */
  async kill(): Promise<void> {
    const child = this.nr?.child;
    this.nr = undefined;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGKILL');
    await gone;
  }

  async stop(): Promise<void> {
    await this.nr?.stop();
    this.nr = undefined;
  }

  get log(): string {
    return this.nr?.log ?? '';
  }

  /** Deploy through the admin API: "full" restarts every node, "nodes" only the changed ones. */
  async deploy(flows: FlowNode[], type: 'full' | 'nodes' = 'full'): Promise<void> {
    const nr = this.nr!;
    const res = await fetch(`${nr.base}/flows`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'Node-RED-API-Version': 'v2', 'Node-RED-Deployment-Type': type },
      body: JSON.stringify({ flows }),
    });
    if (!res.ok) throw new Error(`deploy: ${res.status} ${await res.text()}`);
    await sleep(300);
  }

  inject(id: string): Promise<void> {
    return this.nr!.inject(id);
  }

  global<T = any>(key: string): Promise<T | undefined> {
    return this.nr!.globalValue<T>(key);
  }

  /**
   * Inject the flow's "go" and wait until `stage` has sent its output (procFlow records it in
   * global context); the set it output is returned. A stage's failure that reaches Catch fails the
   * wait; reports, which carry a topic (vm-backup/<host>/recovery and .../ended: what recovery did,
   * or how an earlier set ended), belong to other sets and do not.
   */
  async runTo(stage: string, withinMs = 120_000): Promise<any> {
    const key = stage.replace('-', '_');
    await this.nr!.deleteGlobal(key);
    await this.inject('go');
    return this.waitGlobal(key, withinMs, async () => {
      const failed = ((await this.global<{ topic?: string; error?: string }[]>('caught')) ?? []).filter((c) => !c.topic);
      if (failed.length) throw new Error(`the backup failed: ${failed.map((c) => c.error).join('; ')}`);
    });
  }

  /** Wait until a global context key is set (the flow records each stage's output there). */
  async waitGlobal<T = any>(key: string, withinMs = 60_000, also?: () => Promise<void>): Promise<T> {
    const deadline = Date.now() + withinMs;
    for (;;) {
      const v = await this.global<T>(key);
      if (v !== undefined) return v;
      await also?.();
      if (Date.now() > deadline)
        throw new Error(`global.${key} not set within ${withinMs} ms; node-red log tail:\n${this.log.slice(-3000)}`);
      await sleep(150);
    }
  }
}

/** The global context keys a procFlow records into (each stage's output, what Catch and Status saw). */
const RECORDED = ['caught', 'statuses', 'enumerate', 'classify', 'prepare', 'snapshot', 'post_snapshot', 'copy', 'copy_summary'];

/**
 * Before a case: the lab guests' agents answer and their freeze logs are empty (when the case uses
 * them), Node-RED runs, and what the previous case's flow recorded is cleared.
 */
export async function readyForCase(nr: RealNodeRed, guests: readonly VmRef[] = []): Promise<void> {
  for (const vm of guests) {
    await waitAgent(vm.qga!);
    await clearHookLog(vm.qga!);
  }
  if (!nr.nr) await nr.start();
  for (const key of RECORDED) await nr.nr!.deleteGlobal(key);
}

export const STAGES = ['enumerate', 'classify', 'prepare', 'snapshot', 'post-snapshot', 'copy'] as const;
export type ProcStage = (typeof STAGES)[number];

export interface ProcFlowOptions {
  socketDir: string;
  repository: string;
  journalDir: string;
  hostName: string;
  fallback?: string;
  /** the last stage wired on; its output goes nowhere further (the test then kills, redeploys...) */
  lastStage: ProcStage;
  freezeTimeout?: number;
  idleTimeout?: number;
  /** leave this stage node out of the flow (a node deleted by a partial deploy) */
  without?: ProcStage;
  /** a function node (its code) between this stage and the next: a user's node that spins, waits... */
  between?: { after: ProcStage; func: string };
  sessionTimeout?: number;
  /** the copy node's chain mode (default: its own default, incremental) */
  copyMode?: 'full' | 'incremental';
  /** leave the host config node out (a deploy that removes it; the stage nodes still name it) */
  withoutHost?: boolean;
}

/**
 * inject -> enumerate -> ... -> lastStage; every stage's output also sets global.<stage> (so the
 * test can see how far the backup got). A Catch node and a Status node record what they see in
 * global.caught / global.statuses: the recovery report arrives there.
 */
export function procFlow(o: ProcFlowOptions): FlowNode[] {
  const z = 'faults-tab';
  const flow: FlowNode[] = [
    { id: z, type: 'tab', label: 'fault case' },
    {
      id: 'fh',
      type: 'vmbackup-host',
      name: o.hostName,
      hostName: o.hostName,
      provider: 'qemu',
      socketDir: o.socketDir,
      repository: o.repository,
      journalDir: o.journalDir,
      freezeTimeout: String(o.freezeTimeout ?? 10),
      pauseTimeout: '30',
      sessionTimeout: String(o.sessionTimeout ?? 60),
      idleTimeout: String(o.idleTimeout ?? 300),
    },
    {
      id: 'go',
      type: 'inject',
      z,
      name: 'go',
      props: [{ p: 'payload' }],
      payload: '',
      payloadType: 'str',
      repeat: '',
      once: false,
      x: 0,
      y: 0,
      wires: [['enumerate']],
    },
    {
      id: 'catch',
      type: 'catch',
      z,
      scope: null,
      uncaught: false,
      x: 0,
      y: 0,
      wires: [['rec-caught']],
    },
    {
      id: 'rec-caught',
      type: 'function',
      z,
      x: 0,
      y: 0,
      outputs: 1,
      wires: [],
      func: "const l = global.get('caught') || []; const s = msg.summary; l.push({ topic: msg.topic, source: msg.error && msg.error.source && msg.error.source.id, error: msg.error && msg.error.message, payload: msg.topic ? msg.payload : undefined, summary: s && { ok: s.ok, failedAt: s.failedAt, error: s.error, backups: s.backups, vmState: s.vmState } }); global.set('caught', l); return null;",
    },
    { id: 'status', type: 'status', z, scope: null, x: 0, y: 0, wires: [['rec-status']] },
    {
      id: 'rec-status',
      type: 'function',
      z,
      x: 0,
      y: 0,
      outputs: 1,
      wires: [],
      func: "const l = global.get('statuses') || []; l.push({ source: msg.status.source.id, text: msg.status.text, fill: msg.status.fill }); global.set('statuses', l); return null;",
    },
  ];
  if (o.withoutHost) flow.splice(1, 1);
  const present = STAGES.filter((s) => s !== o.without);
  for (const stage of present) {
    const i = STAGES.indexOf(stage);
    const next = STAGES[i + 1];
    let onward: string[] = stage !== o.lastStage && next && next !== o.without ? [next] : [];
    if (o.between?.after === stage && onward.length) {
      flow.push({ id: 'between', type: 'function', z, x: 0, y: 0, outputs: 1, wires: [onward], func: o.between.func });
      onward = ['between'];
    }
    const node: FlowNode = { id: stage, type: `vmbackup-${stage}`, z, host: 'fh', x: 0, y: 0, wires: [[...onward, `rec-${stage}`]] };
    if (stage === 'classify') node.fallback = o.fallback ?? 'checkpoint';
    if (stage === 'copy')
      Object.assign(node, {
        compress: false,
        concurrency: '2',
        progressInterval: '250',
        ...(o.copyMode ? { mode: o.copyMode } : {}),
        wires: [[`rec-${stage}`], []],
      });
    flow.push(node, {
      id: `rec-${stage}`,
      type: 'change',
      z,
      x: 0,
      y: 0,
      wires: [],
      rules: [
        { t: 'set', p: stage.replace('-', '_'), pt: 'global', to: 'payload', tot: 'msg' },
        // the copy's msg.summary too (what a user's alert flow gets on success)
        ...(stage === 'copy' ? [{ t: 'set', p: 'copy_summary', pt: 'global', to: 'summary', tot: 'msg' }] : []),
      ],
    });
  }
  return flow;
}
