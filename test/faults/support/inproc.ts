// The real pipeline nodes in Node-RED (node-red-node-test-helper), driven one stage at a time so
// that a fault can be injected between any two stages: each stage node is wired only to a helper
// node, the test forwards the message (or does not: a lost message), and a Catch node reports
// refusals.
import * as path from 'node:path';
import type { BackupHost } from '../../../src/pipeline/backup-host';
import { CATCH, helper, NODE_MODULES, pipelineFlow, STAGE_NODES } from '../../nodes/flow-fixture';
import { sleep } from './world';

export type Stage = (typeof STAGE_NODES)[number];

export interface RunOptions {
  socketDir: string;
  repository: string;
  journalDir: string;
  fallback?: string;
  unreachable?: string;
  hostName?: string;
  hostExtra?: Record<string, unknown>;
}

export type StepResult = { ok: true; payload: any; msg: any } | { ok: false; error: string; msg: any };

export class InProcessRun {
  readonly hostName: string;
  private started = false;
  /** every message the Catch node got, in order */
  readonly caught: any[] = [];

  constructor(readonly o: RunOptions) {
    this.hostName = o.hostName ?? 'faulthost';
  }

  get journalFile(): string {
    return path.join(this.o.journalDir, `journal-${this.hostName}.jsonl`);
  }

  async load(): Promise<void> {
    if (!this.started) {
      await new Promise<void>((resolve) => helper.startServer(() => resolve()));
      this.started = true;
    }
    const flow = pipelineFlow({
      socketDir: this.o.socketDir,
      repository: this.o.repository,
      journalDir: this.o.journalDir,
      fallback: this.o.fallback ?? 'checkpoint',
      ...(this.o.unreachable ? { unreachable: this.o.unreachable } : {}),
      wired: false,
      hostExtra: { hostName: this.hostName, ...this.o.hostExtra },
    });
    await helper.load([...NODE_MODULES, CATCH], flow as any);
    helper.getNode('caught').on('input', (msg: any) => this.caught.push(msg));
  }

  /** Close every node (what a redeploy does to them); the server stays up for the next load. */
  async unload(): Promise<void> {
    await helper.unload();
  }

  async stop(): Promise<void> {
    await helper.unload().catch(() => undefined);
    if (this.started) await new Promise<void>((resolve) => helper.stopServer(() => resolve()));
    this.started = false;
  }

  host(): Promise<BackupHost> | undefined {
    return (helper.getNode('host') as any)?.backupHost();
  }

  /** Send `payload` into a stage node; resolve with its output or with the refusal the Catch node got. */
  step(stage: Stage, payload: unknown, timeoutMs = 120_000): Promise<StepResult> {
    const out = helper.getNode(`out-${stage}`);
    const caught = helper.getNode('caught');
    return new Promise((resolve, reject) => {
      const cleanup = () => {
        clearTimeout(timer);
        out.removeListener('input', onOut);
        caught.removeListener('input', onCaught);
      };
      const onOut = (msg: any) => {
        cleanup();
        resolve({ ok: true, payload: msg.payload, msg });
      };
      const onCaught = (msg: any) => {
        if (msg?.error?.source?.id !== stage || /\/recovery$/.test(String(msg.topic ?? ''))) return;
        cleanup();
        // Node-RED puts the error's name in front ("StageError: ..."): the text itself names the field
        resolve({ ok: false, error: String(msg.error.message).replace(/^[A-Za-z]*Error: /, ''), msg });
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`${stage}: neither output nor refusal within ${timeoutMs} ms`));
      }, timeoutMs);
      timer.unref();
      out.on('input', onOut);
      caught.on('input', onCaught);
      helper.getNode(stage).receive({ payload });
    });
  }

  /** Run stages in order from `from` (with `payload`) up to and including `to`; stop at a refusal. */
  async through(
    to: Stage,
    payload: unknown = '',
    from: Stage = 'enumerate',
  ): Promise<{ results: Partial<Record<Stage, StepResult>>; last: StepResult; stage: Stage }> {
    const results: Partial<Record<Stage, StepResult>> = {};
    let current: unknown = payload;
    let last: StepResult | undefined;
    let stage: Stage = from;
    for (const s of STAGE_NODES.slice(STAGE_NODES.indexOf(from), STAGE_NODES.indexOf(to) + 1)) {
      stage = s;
      last = await this.step(s, current);
      results[s] = last;
      if (!last.ok) break;
      current = last.payload;
    }
    return { results, last: last!, stage };
  }

  /** Wait until the host has no live backup set left (watchdogs, aborts and undos finished). */
  async settled(withinMs = 60_000): Promise<void> {
    const ready = this.host();
    if (!ready) return; // unloaded: the closing host node already aborted every set
    const host = await ready.catch(() => undefined);
    if (!host) return; // the host never became ready: nothing can have started
    const deadline = Date.now() + withinMs;
    while (host.live.size > 0) {
      if (Date.now() > deadline)
        throw new Error(
          `backup sets still live after ${withinMs} ms: ${[...host.live.values()].map((l) => `${l.backupId}@${l.stage}`).join(', ')}`,
        );
      await sleep(100);
    }
  }
}
