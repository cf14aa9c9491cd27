// The guardian process itself (started by guardian.ts, one per backup set). It owns the guest
// agent of every VM the set freezes: Node-RED asks it over the IPC channel to freeze, thaw and
// read the freeze status, and it arms its own timer at freezeTimeout before sending the freeze.
// That timer runs here, in a process that no function node can block and that a SIGSTOP of
// Node-RED does not stop: the freeze cap holds whether Node-RED is dead, busy or stopped.
//
// When the IPC channel closes (Node-RED died) it thaws at once and undoes the rest of the set from
// the journal. When Node-RED hands it the undos it could not finish ("adopt"), it retries them
// until they are done, writes "end" for the set and exits, so no guardian outlives its set.
import { performance } from 'node:perf_hooks';
import { Journal } from '../journal/journal';
import { pendingUndos, type PendingUndo } from '../ledger/pending';
import { undo } from '../ledger/undo';
import { takeBackPartialPublish } from '../ledger/unpublish';
import type { HostProvider } from '../providers/provider';
import type { GuardianReply, GuardianRequest, GuardianSpec } from './protocol';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** A guest this process froze and has not thawed yet. */
interface Held {
  /** performance.now() when guest-fsfreeze-freeze was sent: frozenMs is measured from it */
  since: number;
  cap: NodeJS.Timeout;
  capped: boolean;
  /** the thaw under way (the cap's and Node-RED's share it) */
  thawing?: Promise<{ frozenMs: number; capped: boolean }>;
  retry?: NodeJS.Timeout;
}

export async function main(spec: GuardianSpec): Promise<void> {
  const held = new Map<string, Held>();
  /** thaws done here, for a thaw request that arrives after the cap thawed (Node-RED was busy) */
  const thawed = new Map<string, { frozenMs: number; capped: boolean }>();
  const journal = new Journal(spec.journal);
  let provider: HostProvider | undefined;
  // loaded on first use: the guardian is the one place of the pipeline that builds a provider
  const qemu = () => {
    if (!provider) {
      const { providerFromSpec } = require('../providers') as typeof import('../providers');
      provider = providerFromSpec(spec.provider);
    }
    return provider;
  };
  const send = (m: GuardianReply) => {
    try {
      process.send?.(m);
    } catch {
      // the channel is gone: the disconnect handler takes over
    }
  };
  const connected = () => process.connected === true && process.ppid === spec.parentPid;
  // a thaw is a short command; failing fast and retrying beats waiting out a long command timeout
  const thawMs = Math.min(spec.commandMs, 2000);

  function thawVm(vm: string): Promise<{ frozenMs: number; capped: boolean }> {
    const h = held.get(vm);
    if (!h) return Promise.resolve(thawed.get(vm) ?? { frozenMs: 0, capped: false });
    h.thawing ??= (async () => {
      clearTimeout(h.cap);
      try {
        await qemu().thaw(vm, thawMs);
      } catch (err) {
        h.thawing = undefined;
        throw err;
      }
      const done = { frozenMs: performance.now() - h.since, capped: h.capped };
      held.delete(vm);
      if (h.retry) clearTimeout(h.retry);
      thawed.set(vm, done);
      // the agent channel serves one client: give it back now (the host's tools, the next enumerate)
      void qemu()
        .release?.([vm])
        .catch(() => undefined);
      return done;
    })();
    return h.thawing;
  }

  /** Thaw on our own (the cap, or a thaw that failed before): retried every second until it holds. */
  function thawAlone(vm: string): void {
    const h = held.get(vm);
    if (!h || h.retry) return;
    thawVm(vm).then(
      (done) => send({ event: 'thawed', vm, ...done }),
      () => {
        const again = held.get(vm);
        if (!again) return;
        again.retry = setTimeout(() => {
          again.retry = undefined;
          thawAlone(vm);
        }, 1000);
      },
    );
  }

  async function handle(req: GuardianRequest): Promise<unknown> {
    switch (req.op) {
      case 'ping':
        return 'pong';
      case 'freeze': {
        if (held.has(req.vm)) throw new Error(`${req.vm} is frozen already`);
        thawed.delete(req.vm);
        // armed before the command: a freeze that hangs in the guest is thawed at the cap too
        const cap = setTimeout(() => {
          h.capped = true;
          thawAlone(req.vm);
        }, req.capMs);
        const h: Held = { since: performance.now(), capped: false, cap };
        held.set(req.vm, h);
        return (await qemu().freeze({ id: req.vm } as never, req.timeoutMs)).frozenFilesystems;
      }
      case 'thaw':
        try {
          return await thawVm(req.vm);
        } catch (err) {
          // keep trying on our own: a frozen guest is the worst harm we can do
          thawAlone(req.vm);
          throw err;
        }
      case 'status': {
        const status = await qemu().freezeStatus?.(req.vm);
        return { status, capped: held.get(req.vm)?.capped ?? thawed.get(req.vm)?.capped ?? false };
      }
      case 'adopt':
        // "ended" only when every undo was done; after giving up it just exits (Node-RED sees the
        // exit, takes back any guest still frozen, and recovery at the next start does the rest)
        void adopt(false).then(
          (done) => {
            if (done) send({ event: 'ended' });
            setTimeout(() => process.exit(0), 50);
          },
          () => setTimeout(() => process.exit(1), 50), // the journal cannot be written: recovery at start
        );
        return 'adopted';
    }
  }

  let adopting: Promise<boolean> | undefined;
  /** Undo what the journal still lists for the set, retrying until done (true) or giveUpMs passed (false). */
  function adopt(orphaned: boolean): Promise<boolean> {
    adopting ??= (async () => {
      const by = orphaned ? { by: 'guardian' as const } : {};
      // recovery at a start meanwhile (a redeploy's new host node) leaves the set to this process while it runs
      journal.append({ backupId: spec.backupId, op: 'adopt', phase: 'intent', data: { pid: process.pid, ...by } });
      const t0 = performance.now();
      if (orphaned) {
        // a set cut between two VMs' publish renames is taken back first (all or none)
        for (const a of await takeBackPartialPublish(journal.read().filter((e) => e.backupId === spec.backupId))) {
          if (!a.ok) continue;
          journal.append({ backupId: spec.backupId, vm: a.vm, op: 'unpublish', phase: 'done', data: { by: 'guardian' } });
          journal.append({ backupId: spec.backupId, vm: a.vm, op: 'discard', phase: 'done', data: { by: 'guardian' } });
        }
      }
      for (;;) {
        const undos = pendingUndos(journal.read()).filter((u) => u.backupId === spec.backupId);
        let failed = 0;
        for (const u of undos) {
          try {
            const result = await undoOne(u);
            journal.append({
              backupId: u.backupId,
              vm: u.vm,
              op: u.kind,
              phase: 'done',
              data: { ...by, ...(result === 'nothing-to-do' ? { nothingToDo: true } : {}) },
            });
          } catch {
            failed++;
          }
        }
        if (failed === 0 && held.size === 0) {
          journal.append({ backupId: spec.backupId, op: 'end', phase: 'done', data: { ...by } });
          return true;
        }
        if (performance.now() - t0 > spec.giveUpMs) return false; // recovery at the next start goes on
        await sleep(1000);
      }
    })();
    return adopting;
  }

  /** One undo; a guest frozen by this process is thawed through its own hold on the agent. */
  async function undoOne(u: PendingUndo): Promise<'done' | 'nothing-to-do'> {
    if (u.kind === 'thaw' && held.has(u.vm)) {
      await thawVm(u.vm);
      return 'done';
    }
    return undo(qemu(), u, { commandMs: spec.commandMs });
  }

  let finishing = false;
  async function parentGone(): Promise<void> {
    if (finishing) return;
    finishing = true;
    // first the guests this process holds frozen: at once, in parallel
    await Promise.all([...held.keys()].map((vm) => thawVm(vm).catch(() => undefined)));
    try {
      await adopt(true);
    } finally {
      await provider?.close().catch(() => undefined);
      journal.close();
      process.exit(0);
    }
  }

  // A SIGTERM while Node-RED lives is Node-RED ending the set (nothing of it is left). A SIGTERM
  // after it died (a service manager stopping the whole unit) must not stop the undo: it is short,
  // and the manager waits before SIGKILL.
  process.on('SIGTERM', () => {
    if (!connected()) return;
    if (held.size === 0) process.exit(0);
    // never leave a guest frozen on the way out
    void Promise.all([...held.keys()].map((vm) => thawVm(vm).catch(() => undefined))).then(() => process.exit(0));
  });
  process.on('message', (req: GuardianRequest) => {
    handle(req).then(
      (value) => send({ id: req.id, ok: true, value }),
      (err: Error) => send({ id: req.id, ok: false, error: err.message }),
    );
  });
  process.on('disconnect', () => void parentGone());
  send({ event: 'ready' });
  // Reparented without a disconnect seen (it should not happen; cheap to check): Node-RED is gone.
  // Also ends a guardian whose set Node-RED ended while the SIGTERM was lost.
  const ended = () => journal.read().some((e) => e.backupId === spec.backupId && e.op === 'end');
  const poll = setInterval(() => {
    if (!connected()) void parentGone();
    else if (held.size === 0 && !adopting && ended()) process.exit(0);
  }, 1000);
  void poll;
}
