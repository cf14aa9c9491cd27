// Deadlines live outside the event loop (docs/faults.md): a guest is never frozen past the cap
// (freezeTimeout) whether Node-RED is busy, stopped or dead, because the cap is enforced by the
// set's guardian process, which owns the guest agent while the guest is frozen. And a set ends,
// with its guardian gone, once every undo is done, even one that failed first.
// Frozen time is read from the guest's own clock (its freeze hook logs "freeze"/"thaw" with its
// uptime); guardian processes are found in /proc by their argument vector.
import * as assert from 'node:assert/strict';
import { promises as fs, mkdirSync, mkdtempSync, readFileSync, symlinkSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Journal } from '../../src/journal/journal';
import { pendingUndos } from '../../src/ledger/pending';
import { BackupHost, DEFAULT_TIMEOUTS } from '../../src/pipeline/backup-host';
import { QemuProvider } from '../../src/providers/qemu/qemu-provider';
import { runProgram } from '../../src/util/run';
import { startBareWorld, type BareWorld } from './support/bare';
import { clearHookLog, guestExec, hookLog, waitAgent } from './support/guest';
import { InProcessRun } from './support/inproc';
import { ensureLab, labImages, labRefs, labRun, qgaOf } from './support/lab';
import { procFlow, RealNodeRed, type ProcFlowOptions } from './support/nodered';
import { faultCase } from './support/table';
import {
  assertNoFleeceFiles,
  assertRepository,
  assertVmsUnharmed,
  checkGuestFrozen,
  fmtMs,
  guardiansOf,
  readJournal,
  repositoryState,
  sleep,
  type VmRef,
} from './support/world';

const GROUP = 'deadlines outside the event loop';
const CAP_S = 5;
const LIMIT_MS = CAP_S * 1000 + 1000;

async function waitNoGuardian(journalFile: string, withinMs: number): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    const pids = await guardiansOf(journalFile);
    if (pids.length === 0) return Date.now() - t0;
    if (Date.now() - t0 > withinMs)
      assert.fail(`guardian process(es) ${pids.join(', ')} still run ${withinMs} ms after the set's undos were done`);
    await sleep(200);
  }
}

async function waitEnded(journalFile: string, backupId: string, withinMs: number): Promise<void> {
  const deadline = Date.now() + withinMs;
  while (!readJournal(journalFile).some((e) => e.backupId === backupId && e.op === 'end')) {
    if (Date.now() > deadline) assert.fail(`backup set ${backupId} did not end within ${withinMs} ms`);
    await sleep(250);
  }
}

/** The manifests of a published set: consistency per VM. */
function consistencies(repository: string, backupId: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const vm of labRefs) {
    const m = JSON.parse(readFileSync(path.join(repository, 'lab', vm.id, backupId, 'manifest.json'), 'utf8'));
    out[vm.id] = m.consistency;
  }
  return out;
}

/** Guests' own frozen spans, each checked against `limitMs`. */
async function guestSpans(limitMs = LIMIT_MS): Promise<string> {
  const spans: string[] = [];
  for (const vm of labRefs) {
    await waitAgent(vm.qga!);
    spans.push(`${vm.id} ${fmtMs(checkGuestFrozen(vm.id, await hookLog(vm.qga!), limitMs))}`);
  }
  return `frozen max (guest clock): ${spans.join(', ')}`;
}

/**
 * Wait for a global the flow sets, through the admin API. A Node-RED whose loop was held (or that
 * was stopped) drops the keep-alive connections that timed out meanwhile: a failed request is
 * asked again, not taken as the answer.
 */
async function waitGlobal(nr: RealNodeRed, key: string, withinMs: number): Promise<any> {
  const deadline = Date.now() + withinMs;
  let lastError = '';
  for (;;) {
    try {
      // a stage's failure; reports (a topic: recovery, an earlier set's ending) are of other sets
      const failed = ((await nr.global<any[]>('caught')) ?? []).filter((c) => !c.topic);
      if (failed.length) throw new Error(`the backup failed: ${failed.map((c) => c.error).join('; ')}`);
      const v = await nr.global<any>(key);
      if (v !== undefined) return v;
    } catch (err) {
      if (/the backup failed/.test((err as Error).message)) throw err;
      lastError = (err as Error).message;
    }
    if (Date.now() > deadline)
      throw new Error(`global.${key} not set within ${withinMs} ms (${lastError}); node-red log tail:\n${nr.log.slice(-3000)}`);
    await sleep(200);
  }
}

describe('fault injection: deadlines outside the event loop (the guardian owns the freeze cap)', function () {
  this.timeout(300_000);
  let repository: string;
  let nr: RealNodeRed | undefined;
  let bare: BareWorld | undefined;

  before(async function () {
    this.timeout(600_000);
    await ensureLab();
    repository = mkdtempSync(path.join(os.tmpdir(), 'vmb-faults-deadlines-'));
  });
  after(async () => {
    await nr?.stop();
    if (nr) await fs.rm(nr.userDir, { recursive: true, force: true });
    await bare?.host.stop();
    if (repository) await fs.rm(repository, { recursive: true, force: true });
  });

  async function resetGuests(): Promise<void> {
    for (const vm of labRefs) {
      await waitAgent(vm.qga!);
      await clearHookLog(vm.qga!);
    }
  }

  /**
   * A whole backup in a real node-red process with a function node between prepare and snapshot;
   * `during` runs once the prepare output is seen (the guests are frozen then). The cap must hold
   * by the guests' clocks, the backup must be published with every guest labelled crash-consistent
   * (the cap thawed them), nothing may be left (overlays, undos, guardian).
   */
  async function realCase(name: string, expected: string, between: string, during: (pid: number) => Promise<string>) {
    await faultCase(GROUP, name, expected, async () => {
      await resetGuests();
      if (!nr) {
        nr = RealNodeRed.create();
        await nr.start();
      }
      for (const key of ['caught', 'statuses', 'enumerate', 'classify', 'prepare', 'snapshot', 'post_snapshot', 'copy'])
        await nr.nr!.deleteGlobal(key);
      const journalDir = mkdtempSync(path.join(os.tmpdir(), 'vmb-faults-journal-'));
      const journalFile = path.join(journalDir, 'journal-lab.jsonl');
      const o: ProcFlowOptions = {
        socketDir: labRun,
        repository,
        journalDir,
        hostName: 'lab',
        lastStage: 'copy',
        freezeTimeout: CAP_S,
        sessionTimeout: 300,
        between: { after: 'prepare', func: between },
      };
      await nr.deploy(procFlow(o));
      const before = await repositoryState(repository);
      await nr.inject('go');
      const prepared = await waitGlobal(nr, 'prepare', 120_000);
      const note = await during(nr.nr!.child.pid!);
      const copied = await waitGlobal(nr, 'copy', 180_000);
      const notes = [note];
      for (const vm of copied.vms) {
        assert.equal(vm.snapshot.thawedByWatchdog, true, `${vm.id}: the cap thawed it, the snapshot must say so`);
        assert.equal(vm.consistency, 'crash', `${vm.id}: thawed by the cap before its snapshot, it must be labelled crash-consistent`);
      }
      const labels = consistencies(repository, prepared.backupId);
      assert.deepEqual(
        Object.values(labels),
        labRefs.map(() => 'crash'),
        'manifests say crash-consistent',
      );
      notes.push(
        `published, manifests: ${Object.entries(labels)
          .map(([k, v]) => `${k} ${v}`)
          .join(', ')}, thawedByWatchdog`,
      );
      notes.push(await guestSpans());
      await assertNoFleeceFiles([labImages]);
      notes.push(await assertVmsUnharmed(labRefs));
      notes.push(await assertRepository(repository, before, prepared.backupId, true));
      assert.deepEqual(pendingUndos(readJournal(journalFile)), [], 'the journal still lists undos');
      notes.push(`guardian gone ${fmtMs(await waitNoGuardian(journalFile, 5000))} after the set`);
      return notes.join('; ');
    });
  }

  it('(a) a function node elsewhere keeps the event loop busy 15 s while the guests are frozen', async () => {
    await realCase(
      `Node-RED event loop busy 15 s (function node spinning) while guests frozen, cap ${CAP_S} s`,
      `each guest thawed by its guardian at the cap (<= ${CAP_S} + 1 s by the guest's clock); published, labelled crash-consistent (thawedByWatchdog)`,
      "const end = Date.now() + 15000; while (Date.now() < end) { /* a user's heavy computation */ } return msg;",
      async () => 'loop blocked 15 s right after prepare',
    );
  });

  it('(b) Node-RED SIGSTOPped 20 s while the guests are frozen, then SIGCONT', async () => {
    await realCase(
      `Node-RED SIGSTOPped 20 s while guests frozen, then SIGCONT, cap ${CAP_S} s`,
      `each guest thawed by its guardian at the cap (<= ${CAP_S} + 1 s by the guest's clock); after SIGCONT the backup goes on: published, labelled crash-consistent`,
      // hold the message 2 s so that the test stops Node-RED while the guests are frozen
      'setTimeout(() => node.send(msg), 2000); return null;',
      async (pid) => {
        process.kill(pid, 'SIGSTOP');
        try {
          await sleep(20_000);
        } finally {
          process.kill(pid, 'SIGCONT');
        }
        return 'Node-RED stopped 20 s right after prepare';
      },
    );
  });

  // ---- in-process Node-RED (node-red-node-test-helper), for faults of the guardian itself ----

  async function inprocCase(
    name: string,
    expected: string,
    body: (run: InProcessRun) => Promise<{ note: string; backupId: string; published: boolean; limitMs?: number }>,
  ) {
    await faultCase(GROUP, name, expected, async () => {
      await resetGuests();
      const before = await repositoryState(repository);
      const run = new InProcessRun({
        socketDir: labRun,
        repository,
        hostName: 'lab',
        fallback: 'checkpoint',
        journalDir: mkdtempSync(path.join(os.tmpdir(), 'vmb-faults-journal-')),
        hostExtra: { freezeTimeout: CAP_S, idleTimeout: 8, pauseTimeout: 5 },
      });
      let out;
      try {
        await run.load();
        out = await body(run);
        await run.settled(60_000);
      } finally {
        await run.stop();
      }
      const notes = [out.note, await guestSpans(out.limitMs)];
      await assertNoFleeceFiles([labImages]);
      notes.push(await assertVmsUnharmed(labRefs));
      notes.push(await assertRepository(repository, before, out.backupId, out.published));
      assert.deepEqual(pendingUndos(readJournal(run.journalFile)), [], 'the journal still lists undos');
      notes.push(`journal: nothing pending; guardian gone ${fmtMs(await waitNoGuardian(run.journalFile, 5000))} after`);
      return notes.join('; ');
    });
  }

  it('the event loop blocked 15 s in-process while the guests are frozen', async () => {
    await inprocCase(
      `in-process Node-RED: event loop blocked 15 s after prepare, cap ${CAP_S} s`,
      'the guardian thaws at the cap; the snapshot afterwards is published, labelled crash-consistent',
      async (run) => {
        const r = await run.through('prepare');
        assert.ok(r.last.ok, (r.last as any).error);
        const end = Date.now() + 15_000;
        while (Date.now() < end) {
          // the whole process (Node-RED and its timers) is held, as a user's function node would
        }
        const rest = await run.through('copy', r.last.payload, 'snapshot');
        assert.ok(rest.last.ok, (rest.last as any).error);
        for (const vm of rest.last.payload.vms) {
          assert.equal(vm.consistency, 'crash', `${vm.id} must be crash-consistent`);
          assert.equal(vm.snapshot.thawedByWatchdog, true);
        }
        return { note: 'published, both crash-consistent, thawedByWatchdog', backupId: r.last.payload.backupId, published: true };
      },
    );
  });

  it('the guardian SIGSTOPped while the guests are frozen', async () => {
    await inprocCase(
      `guardian SIGSTOPped after prepare (guests frozen), snapshot never sent, cap ${CAP_S} s`,
      'Node-RED finds the stalled guardian a moment after the cap (no answer to a ping), kills it (its agent connections close) and thaws the guests itself; the set ends',
      async (run) => {
        const r = await run.through('prepare');
        assert.ok(r.last.ok, (r.last as any).error);
        const pids = await guardiansOf(run.journalFile);
        assert.equal(pids.length, 1, 'one guardian watches the set');
        process.kill(pids[0]!, 'SIGSTOP');
        await run.settled(30_000);
        return { note: `guardian ${pids[0]} stopped; set ended`, backupId: r.last.payload.backupId, published: false };
      },
    );
  });

  it('the guardian SIGKILLed while the guests are frozen', async () => {
    await inprocCase(
      'guardian SIGKILLed 1 s after prepare (guests frozen), then the snapshot',
      'Node-RED thaws the guests at once from its own process; the snapshot is published crash-consistent (the freeze did not hold until it)',
      async (run) => {
        const r = await run.through('prepare');
        assert.ok(r.last.ok, (r.last as any).error);
        await sleep(1000);
        const pids = await guardiansOf(run.journalFile);
        assert.equal(pids.length, 1, 'one guardian watches the set');
        process.kill(pids[0]!, 'SIGKILL');
        await sleep(1000);
        const rest = await run.through('copy', r.last.payload, 'snapshot');
        if (!rest.last.ok)
          return {
            note: `refused at ${rest.stage}: ${(rest.last as any).error.slice(0, 100)}`,
            backupId: r.last.payload.backupId,
            published: false,
          };
        for (const vm of rest.last.payload.vms) assert.equal(vm.consistency, 'crash', `${vm.id} must be crash-consistent`);
        return { note: 'published, both crash-consistent', backupId: r.last.payload.backupId, published: true };
      },
    );
  });

  it('the agent answers slowly (its freeze hook takes 3 s)', async () => {
    await inprocCase(
      `agent slow: fa-two's freeze hook sleeps 3 s, cap ${CAP_S} s`,
      'published; the cap counts from the freeze sent (the slow freeze is inside it): thawed in time, labelled by what held',
      async (run) => {
        const r = await run.through('classify');
        assert.ok(r.last.ok);
        await guestExec(qgaOf('fa-two'), ['/bin/sh', '-c', 'echo 3 > /run/qga/hook-sleep']);
        const rest = await run.through('copy', r.last.payload, 'prepare');
        assert.ok(rest.last.ok, (rest.last as any).error);
        const labels = rest.last.payload.vms.map((v: any) => `${v.id} ${v.consistency} frozenMs ${Math.round(v.snapshot.frozenMs ?? -1)}`);
        return { note: `published: ${labels.join(', ')}`, backupId: r.last.payload.backupId, published: true };
      },
    );
  });

  // ---- two sets on two hosts at once, each with its own guardian, while the loop is held ----

  it('two sets on two hosts at once, the event loop blocked 15 s while both are frozen', async () => {
    await faultCase(
      GROUP,
      `two hosts (one guest each, own journals and guardians), both sets frozen, event loop blocked 15 s, cap ${CAP_S} s`,
      'each guardian thaws its own guest at the cap; both snapshots afterwards crash-consistent; both sets end, both guardians exit',
      async () => {
        await resetGuests();
        const base = mkdtempSync(path.join(os.tmpdir(), 'vmb-faults-twohosts-'));
        // one socket directory per host, each holding one lab guest's sockets (symbolic links)
        const hosts = labRefs.map((vm, i) => {
          const socketDir = path.join(base, `host${i}`);
          mkdirSync(socketDir);
          for (const ext of ['qmp', 'qga', 'pid'])
            symlinkSync(path.join(labRun, `${vm.id}.${ext}`), path.join(socketDir, `${vm.id}.${ext}`));
          const provider = new QemuProvider({ socketDir });
          const journal = new Journal(path.join(base, `journal-host${i}.jsonl`));
          return {
            vm,
            provider,
            journal,
            host: new BackupHost(provider, journal, {
              hostName: `host${i}`,
              repositoryRoot: repository,
              timeouts: { ...DEFAULT_TIMEOUTS, freezeMs: CAP_S * 1000 },
            }),
          };
        });
        try {
          const prepared = await Promise.all(
            hosts.map(async (h) => h.host.prepare(h.host.classify(await h.host.enumerate(), 'checkpoint'))),
          );
          const guardians = await Promise.all(hosts.map((h) => guardiansOf(h.journal.file)));
          assert.deepEqual(
            guardians.map((g) => g.length),
            [1, 1],
            'one guardian per set',
          );
          const end = Date.now() + 15_000;
          while (Date.now() < end) {
            // both hosts live in this process: neither can run a timer now
          }
          const snapped = await Promise.all(hosts.map((h, i) => h.host.snapshot(prepared[i]!)));
          for (const set of snapped) {
            for (const vm of set.vms) {
              assert.equal(vm.consistency, 'crash', `${vm.id} thawed by the cap: crash-consistent`);
              assert.equal(vm.snapshot.thawedByWatchdog, true);
            }
          }
          await Promise.all(hosts.map((h) => h.host.closeAll('case over')));
          for (const h of hosts) {
            await waitEnded(h.journal.file, prepared[hosts.indexOf(h)]!.backupId, 30_000);
            assert.deepEqual(pendingUndos(h.journal.read()), [], `${h.vm.id}: the journal still lists undos`);
          }
          const gone = await Promise.all(hosts.map((h) => waitNoGuardian(h.journal.file, 5000)));
          await assertNoFleeceFiles([labImages]);
          return [
            `both snapshots crash-consistent, thawedByWatchdog; both sets ended; guardians gone ${gone.map(fmtMs).join(', ')} after`,
            await guestSpans(),
            await assertVmsUnharmed(labRefs),
          ].join('; ');
        } finally {
          for (const h of hosts) {
            await h.host.closeAll('case over').catch(() => undefined);
            await h.provider.close();
            h.journal.close();
          }
          await fs.rm(base, { recursive: true, force: true });
        }
      },
    );
  });

  // ---- an undo that fails, then succeeds when retried: the set ends and its guardian exits ----

  it('(d) a failed undo retried: the guardian is gone once it succeeded', async function () {
    this.timeout(600_000);
    bare ??= await startBareWorld(['alpha', 'beta'], { dataMiB: 8 });
    const world = bare;
    await faultCase(
      GROUP,
      'discard fails (staging directory made immutable, chattr +i, during the copy), made removable 5 s later',
      'copy refused; the discard is retried by the guardian until it succeeds; then the set ends and the guardian exits; nothing left',
      async () => {
        const before = await repositoryState(repository);
        const run = new InProcessRun({
          socketDir: world.host.socketDir,
          repository,
          hostName: 'bare',
          fallback: 'checkpoint',
          journalDir: mkdtempSync(path.join(os.tmpdir(), 'vmb-faults-journal-')),
          hostExtra: { idleTimeout: 8 },
        });
        let staging = '';
        let note = '';
        let backupId = '';
        try {
          await run.load();
          const r = await run.through('post-snapshot');
          assert.ok(r.last.ok, (r.last as any).error);
          backupId = r.last.payload.backupId;
          staging = path.join(repository, 'bare', 'alpha', `.partial-${backupId}`);
          const copying = run.step('copy', r.last.payload);
          for (let i = 0; i < 4000; i++) {
            if (
              await fs.stat(staging).then(
                () => true,
                () => false,
              )
            )
              break;
            await sleep(2);
          }
          await runProgram('chattr', ['+i', staging]);
          const c = await copying;
          assert.equal(c.ok, false, 'the copy cannot finish in an immutable directory');
          await sleep(2000);
          assert.ok(
            await fs.stat(staging).then(
              () => true,
              () => false,
            ),
            'the discard failed first (the staging directory is still there)',
          );
          assert.ok((await guardiansOf(run.journalFile)).length > 0, 'the guardian stays while an undo is pending');
          // a new backup must not touch a VM whose undo is still being retried
          const next = await run.through('prepare');
          assert.equal(next.stage, 'prepare');
          assert.equal(next.last.ok, false, "a new set is refused while the old one's undo is retried");
          assert.match((next.last as any).error, /VM "alpha" still has undos of the ended backup set/);
          await sleep(2000);
          await runProgram('chattr', ['-i', staging]);
          const gone = await waitNoGuardian(run.journalFile, 15_000);
          await waitEnded(run.journalFile, backupId, 5000);
          assert.equal(
            await fs.stat(staging).then(
              () => true,
              () => false,
            ),
            false,
            'the retried discard removed the staging directory',
          );
          await run.settled(20_000); // the refused new set ends by its idle timeout (8 s)
          note = `copy refused ("${(c as any).error.slice(0, 60)}"); a new set refused meanwhile ("${(next.last as any).error.slice(0, 70)}"); discard retried; guardian gone ${fmtMs(gone)} after the directory became removable; set ended`;
        } finally {
          if (staging) await runProgram('chattr', ['-i', staging]).catch(() => undefined);
          await run.stop();
        }
        await assertNoFleeceFiles([world.host.imageDir]);
        const notes = [note, await assertVmsUnharmed(world.refs as VmRef[]), await assertRepository(repository, before, backupId, false)];
        assert.deepEqual(pendingUndos(readJournal(run.journalFile)), [], 'the journal still lists undos');
        notes.push('journal: nothing pending');
        return notes.join('; ');
      },
    );
  });
});
