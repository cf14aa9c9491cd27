// The guardian: a small detached process that watches one live backup set from outside the
// Node-RED process. While Node-RED runs it does nothing (the watchdogs in live-backup.ts act).
// If Node-RED dies (SIGKILL, OOM, crash) with the set's side effects in place, it undoes them at
// once from the journal: thaw, resume, merge, discard; then it writes "end" for the set. So a
// guest is never left frozen until someone restarts Node-RED. Recovery at the next start finds
// nothing left, or repeats what the guardian could not do (every undo is safe to repeat).
//
// Started by LiveBackup with process.execPath and an argument vector (no shell); SIGTERMed when
// the set ends. Only providers that describe themselves for it (guardianSpec) get one.
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import { Journal, pendingUndos } from '../journal/journal';
import type { HostProvider } from '../providers/provider';

export interface GuardianSpec {
  journal: string;
  backupId: string;
  parentPid: number;
  /** how the guardian builds its own provider: QEMU or libvirt */
  provider: { kind: 'qemu' | 'libvirt'; options: Record<string, unknown> };
  commandMs: number;
  /** stop retrying failed undos after this long (recovery at the next start goes on) */
  giveUpMs: number;
}

type Guarded = HostProvider & { guardianSpec?: () => GuardianSpec['provider'] | undefined };

export interface StartedGuardian {
  child: ChildProcess;
  /** resolves once the guardian runs (or could not start, or after 5 s): never rejects */
  ready: Promise<void>;
}

/** Start a guardian for one set; undefined when the provider cannot be guarded from outside. */
export function startGuardian(provider: HostProvider, journal: Journal, backupId: string, commandMs: number): StartedGuardian | undefined {
  const spec = (provider as Guarded).guardianSpec?.();
  if (!spec) return undefined;
  const full: GuardianSpec = { journal: journal.file, backupId, parentPid: process.pid, provider: spec, commandMs, giveUpMs: 600_000 };
  try {
    // stdout is a pipe only until the guardian says it runs; nothing else is ever read from it
    const child = spawn(process.execPath, [__filename, JSON.stringify(full)], { detached: true, stdio: ['ignore', 'pipe', 'ignore'] });
    child.on('error', () => undefined);
    child.unref();
    const out = child.stdout as (NonNullable<ChildProcess['stdout']> & { unref?: () => void }) | null;
    out?.unref?.();
    const ready = new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        out?.destroy();
        resolve();
      };
      const timer = setTimeout(done, 5000);
      timer.unref();
      out?.once('data', done).once('error', done).once('close', done);
      child.once('exit', done);
    });
    return { child, ready };
  } catch {
    return undefined; // the watchdogs and recovery at start still hold
  }
}

export function stopGuardian(child: ChildProcess | undefined): void {
  if (child && child.exitCode === null && child.signalCode === null) {
    try {
      child.kill('SIGTERM');
    } catch {
      // gone already
    }
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function guard(spec: GuardianSpec): Promise<void> {
  // Reparented (the parent died) means Node-RED is gone; a SIGTERM while the parent lives is the
  // parent ending the set. A SIGTERM after the parent died (a service manager stopping the whole
  // unit) must not stop the undo: it is short, and the manager waits before SIGKILL.
  const parentAlive = () => process.ppid === spec.parentPid;
  process.on('SIGTERM', () => {
    if (parentAlive()) process.exit(0);
  });
  // tell the parent we run (it waits for this before the first freeze or save); a parent gone
  // already has closed the pipe: that is not an error here
  process.stdout.on('error', () => undefined);
  process.stdout.write('ready\n');
  const journal = new Journal(spec.journal);
  const ended = () => journal.read().some((e) => e.backupId === spec.backupId && e.op === 'end');
  while (parentAlive()) {
    await sleep(200);
    if (ended()) return;
  }
  // loaded only here: the guardian is the one place of the pipeline that builds a provider
  const { QemuProvider } = require('../providers/qemu/qemu-provider') as typeof import('../providers/qemu/qemu-provider');
  const { LibvirtProvider } = require('../providers/libvirt/libvirt-provider') as typeof import('../providers/libvirt/libvirt-provider');
  const provider = spec.provider.kind === 'libvirt' ? new LibvirtProvider(spec.provider.options as never) : new QemuProvider(spec.provider.options as never);
  const t0 = Date.now();
  try {
    // a set cut between two VMs' publish renames is taken back first (all or none)
    const { takeBackPartialPublish, anyExists } = require('../recovery') as typeof import('../recovery');
    for (const a of await takeBackPartialPublish(journal.read().filter((e) => e.backupId === spec.backupId))) {
      if (a.ok) journal.append({ backupId: spec.backupId, vm: a.vm, op: 'discard', phase: 'done', data: { by: 'guardian' } });
    }
    for (;;) {
      const undos = pendingUndos(journal.read()).filter((u) => u.backupId === spec.backupId);
      let failed = 0;
      for (const u of undos) {
        try {
          if (u.kind === 'thaw') await provider.thaw(u.vm, spec.commandMs);
          else if (u.kind === 'resume') await provider.resume(u.vm, u.previousState);
          else if (u.kind === 'merge') {
            if (!(await anyExists(u.overlays.map((o) => o.overlay)))) {
              // planned before a freeze, never made: nothing to merge, nothing to report
              journal.append({ backupId: u.backupId, vm: u.vm, op: 'merge', phase: 'done', data: { by: 'guardian', nothingToDo: true } });
              continue;
            }
            await provider.merge(u.vm, u.overlays);
          } else await fs.rm(u.dir, { recursive: true, force: true });
          journal.append({ backupId: u.backupId, vm: u.vm, op: u.kind, phase: 'done', data: { by: 'guardian' } });
        } catch {
          failed++;
        }
      }
      if (failed === 0) {
        journal.append({ backupId: spec.backupId, op: 'end', phase: 'done', data: { by: 'guardian' } });
        return;
      }
      if (Date.now() - t0 > spec.giveUpMs) return;
      await sleep(1000);
    }
  } finally {
    await provider.close().catch(() => undefined);
    journal.close();
  }
}

if (require.main === module) {
  guard(JSON.parse(process.argv[2] ?? '{}') as GuardianSpec).then(
    () => process.exit(0),
    () => process.exit(1),
  );
}
