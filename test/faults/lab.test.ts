// Fault injection on real guests (TCG lab VMs with qemu-ga and a workload writing all the time),
// through the pipeline nodes in Node-RED: the agent not answering, hanging inside its freeze,
// killed, or stopped while the guest is frozen; messages lost or malformed while a guest is frozen;
// a redeploy while frozen; QEMU killed while frozen.
// Frozen time is measured by the guest itself (its freeze hook logs "freeze"/"thaw" with the
// guest's uptime) and from the journal file, not from the product's report. Every backup labelled
// application-consistent is checked from its image (ext4 needs no journal recovery, e2fsck clean).
import * as assert from 'node:assert/strict';
import { promises as fs, mkdtempSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pendingUndos } from '../../src/ledger/pending';
import { inspectImage } from '../support/image-check';
import {
  clearHookLog,
  hangNextFreeze,
  hookLog,
  killAgentDuringNextFreeze,
  killAgentNow,
  stopAgentFor,
  guestExec,
  waitAgent,
} from './support/guest';
import { InProcessRun, type Stage, type StepResult } from './support/inproc';
import { ensureLab, labImages, labRefs, labRun, qgaOf, restartLabVm } from './support/lab';
import { faultCase } from './support/table';
import {
  assertNoFleeceFiles,
  assertRepository,
  assertVmsUnharmed,
  checkGuestFrozen,
  fmtMs,
  journalFrozenMs,
  readJournal,
  repositoryState,
  sleep,
} from './support/world';

const GROUP = 'lab guests';
const FREEZE_S = 5;
const LIMIT_MS = FREEZE_S * 1000 + 1000;

function short(text: string, n = 100): string {
  return text.length > n ? `${text.slice(0, n - 1)}~` : text;
}

function refusal(r: StepResult, stage: string): string {
  assert.equal(r.ok, false, `${stage} should have refused`);
  return `${stage} refused: "${short((r as { error: string }).error)}"`;
}

interface Outcome {
  note: string;
  backupId?: string;
  published: boolean;
  /** VMs whose QEMU the case killed (started again after the checks that need no guest) */
  killed?: string[];
}

describe('fault injection: lab guests (qemu-ga, freeze) through the pipeline nodes', function () {
  this.timeout(300_000);
  let repository: string;

  before(async function () {
    this.timeout(600_000);
    await ensureLab();
    repository = mkdtempSync(path.join(os.tmpdir(), 'vmb-faults-labrepo-'));
  });
  after(async () => {
    if (repository) await fs.rm(repository, { recursive: true, force: true });
  });

  async function labCase(name: string, expected: string, body: (run: InProcessRun) => Promise<Outcome>, o: { fallback?: string } = {}) {
    await faultCase(GROUP, name, expected, async () => {
      for (const vm of labRefs) {
        await waitAgent(vm.qga!);
        await clearHookLog(vm.qga!);
      }
      const before = await repositoryState(repository);
      const run = new InProcessRun({
        socketDir: labRun,
        repository,
        hostName: 'lab',
        journalDir: mkdtempSync(path.join(os.tmpdir(), 'vmb-faults-journal-')),
        fallback: o.fallback ?? 'checkpoint',
        hostExtra: { freezeTimeout: FREEZE_S, idleTimeout: 8, pauseTimeout: 5 },
      });
      let out: Outcome;
      try {
        await run.load();
        out = await body(run);
        await run.settled(60_000);
      } finally {
        await run.stop();
      }
      const notes = [out.note];
      // frozen time, as the journal and as the guests themselves saw it
      const journal = readJournal(run.journalFile);
      const byJournal = journalFrozenMs(journal);
      await assertNoFleeceFiles([labImages]);
      for (const id of out.killed ?? []) await restartLabVm(id);
      const guestSpans: string[] = [];
      for (const vm of labRefs) {
        if (out.killed?.includes(vm.id)) {
          guestSpans.push(`${vm.id} killed`);
          continue;
        }
        // the agent may be back from a SIGSTOP or a respawn only now
        await waitAgent(vm.qga!);
        const log = await hookLog(vm.qga!);
        const longest = checkGuestFrozen(vm.id, log, LIMIT_MS);
        // a freeze the agent acknowledged is in the guest's log: else the window was not measured
        if (journal.some((e) => e.vm === vm.id && e.op === 'freeze' && e.phase === 'done')) {
          assert.ok(
            longest !== undefined,
            `${vm.id}: the journal records an acknowledged freeze but the guest's log shows none: ${JSON.stringify(log)}`,
          );
        }
        guestSpans.push(`${vm.id} ${fmtMs(longest)}${byJournal.has(vm.id) ? ` (journal ${fmtMs(byJournal.get(vm.id))})` : ''}`);
      }
      notes.push(`frozen max: ${guestSpans.join(', ')}`);
      notes.push(await assertVmsUnharmed(labRefs));
      notes.push(await assertRepository(repository, before, out.backupId, out.published));
      if (out.published && out.backupId) notes.push(checkConsistencyClaims(out.backupId));
      assert.deepEqual(pendingUndos(readJournal(run.journalFile)), [], 'the journal still lists undos');
      notes.push('journal: nothing pending');
      return notes.join('; ');
    });
  }

  /** Every published manifest of the set: "application" must be provable from the image. */
  function checkConsistencyClaims(backupId: string): string {
    const claims: string[] = [];
    for (const vm of labRefs) {
      const dir = path.join(repository, 'lab', vm.id, backupId);
      let manifest: any;
      try {
        manifest = JSON.parse(require('node:fs').readFileSync(path.join(dir, 'manifest.json'), 'utf8'));
      } catch {
        continue;
      }
      const disk = manifest.files.find((f: any) => f.disk === 'drive-virtio0');
      if (manifest.consistency === 'application') {
        const facts = inspectImage(path.join(dir, disk.name));
        assert.equal(facts.needsRecovery, false, `${vm.id} is labelled application-consistent but its ext4 needs journal recovery`);
        assert.equal(facts.e2fsckExit, 0, `${vm.id}: e2fsck -fn not clean`);
        claims.push(`${vm.id} application (image proves it)`);
      } else claims.push(`${vm.id} ${manifest.consistency}`);
    }
    return claims.join(', ');
  }

  const go = async (run: InProcessRun, to: Stage, from: Stage = 'enumerate', payload: unknown = '') => {
    const r = await run.through(to, payload, from);
    return r;
  };

  it('baseline: both guests application-consistent', async () => {
    await labCase('no fault (baseline)', 'published; both application-consistent, proven from the images', async (run) => {
      const r = await go(run, 'copy');
      assert.ok(r.last.ok, (r.last as any).error);
      assert.deepEqual(
        r.last.payload.vms.map((v: any) => v.consistency),
        ['application', 'application'],
      );
      return { note: 'published', backupId: r.last.payload.backupId, published: true };
    });
  });

  it('agent not answering at enumerate', async () => {
    await labCase(
      'enumerate: guest agent not answering (qemu-ga SIGSTOPped 10 s)',
      'that VM classified crash-consistent (checkpoint), the other application; published',
      async (run) => {
        await stopAgentFor(qgaOf('fa-two'), 10);
        const r = await go(run, 'copy');
        assert.ok(r.last.ok, (r.last as any).error);
        const two = r.last.payload.vms.find((v: any) => v.id === 'fa-two');
        assert.equal(two.method, 'checkpoint');
        assert.equal(two.consistency, 'crash');
        await waitAgent(qgaOf('fa-two'));
        return { note: `fa-two ${two.method}/${two.consistency}`, backupId: r.last.payload.backupId, published: true };
      },
    );
  });

  it('agent not answering at prepare', async () => {
    await labCase(
      'prepare: guest agent stops answering after classify (SIGSTOP 8 s)',
      'refused (no VM backed up); the other guest thawed at once; nothing published',
      async (run) => {
        const r = await go(run, 'classify');
        assert.ok(r.last.ok);
        await stopAgentFor(qgaOf('fa-two'), 8);
        const p = await run.step('prepare', r.last.payload);
        await waitAgent(qgaOf('fa-two'));
        return { note: refusal(p, 'prepare'), backupId: r.last.payload.backupId, published: false };
      },
    );
  });

  it('agent hangs inside its freeze', async () => {
    await labCase(
      'prepare: agent hangs inside guest-fsfreeze-freeze (hook sleeps 8 s)',
      `refused when freezeTimeout (${FREEZE_S} s) passes; the guest thawed as soon as its agent answers; nothing published`,
      async (run) => {
        const r = await go(run, 'classify');
        assert.ok(r.last.ok);
        await hangNextFreeze(qgaOf('fa-two'), 8);
        const p = await run.step('prepare', r.last.payload);
        await run.settled(60_000);
        return { note: refusal(p, 'prepare'), backupId: r.last.payload.backupId, published: false };
      },
    );
  });

  it('agent killed while the guest is frozen', async () => {
    await labCase(
      'snapshot: agent SIGKILLed 1 s after it acknowledged the freeze (init respawns it), snapshot at 1.5 s',
      'published; application only if the respawned agent confirms the freeze at the snapshot (the image must prove it), else crash; thawed',
      async (run) => {
        const r = await go(run, 'classify');
        assert.ok(r.last.ok);
        // killed 1 s after the agent answered the freeze; the snapshot comes at 1.5 s, while the guest is still frozen
        await killAgentDuringNextFreeze(qgaOf('fa-two'), 1000);
        const p = await run.step('prepare', r.last.payload);
        assert.ok(p.ok, (p as any).error);
        await sleep(1500);
        const rest = await go(run, 'copy', 'snapshot', p.payload);
        if (!rest.last.ok) return { note: refusal(rest.last, rest.stage), backupId: r.last.payload.backupId, published: false };
        const two = rest.last.payload.vms.find((v: any) => v.id === 'fa-two');
        return { note: `fa-two labelled ${two.consistency}`, backupId: r.last.payload.backupId, published: true };
      },
    );
  });

  it('agent killed just before prepare', async () => {
    await labCase(
      'prepare: agent SIGKILLed right before the freeze',
      'either refused or published; whatever happens, thawed and labelled honestly',
      async (run) => {
        const r = await go(run, 'classify');
        assert.ok(r.last.ok);
        await killAgentNow(qgaOf('fa-two'));
        const rest = await go(run, 'copy', 'prepare', r.last.payload);
        if (!rest.last.ok) return { note: refusal(rest.last, rest.stage), backupId: r.last.payload.backupId, published: false };
        return {
          note: `published (${rest.last.payload.vms.map((v: any) => `${v.id} ${v.consistency}`).join(', ')})`,
          backupId: r.last.payload.backupId,
          published: true,
        };
      },
    );
  });

  it('agent killed during the copy', async () => {
    await labCase('copy: agent SIGKILLed after post-snapshot', 'published (the copy needs no agent)', async (run) => {
      const r = await go(run, 'post-snapshot');
      assert.ok(r.last.ok);
      await killAgentNow(qgaOf('fa-one'));
      const c = await run.step('copy', r.last.payload);
      assert.ok(c.ok, (c as any).error);
      return { note: 'published', backupId: r.last.payload.backupId, published: true };
    });
  });

  it('agent stopped while the guest is frozen', async () => {
    await labCase(
      'snapshot: agent SIGSTOPped (1 s to 3 s into the freeze), snapshot at 1.5 s',
      'published, that guest labelled crash-consistent (its freeze cannot be confirmed at the snapshot); thawed as soon as the agent answers',
      async (run) => {
        const r = await go(run, 'classify');
        assert.ok(r.last.ok);
        // armed before the freeze (a frozen agent refuses guest-exec): stop it 200 ms into the freeze
        await guestExec(qgaOf('fa-two'), [
          '/bin/sh',
          '-c',
          `n=$(grep -c '^freeze' /run/qga/fsfreeze.log); i=0
while [ "$(grep -c '^freeze' /run/qga/fsfreeze.log)" -le "$n" ] && [ $i -lt 1200 ]; do usleep 50000; i=$((i+1)); done
usleep 1000000; p=$(pidof qemu-ga); kill -STOP $p; sleep 2; kill -CONT $p`,
        ]);
        // stopped 1 s into the freeze, continued at 3 s; the snapshot comes at 1.5 s
        const p = await run.step('prepare', r.last.payload);
        assert.ok(p.ok, (p as any).error);
        await sleep(1500);
        const rest = await go(run, 'copy', 'snapshot', p.payload);
        if (!rest.last.ok) return { note: refusal(rest.last, rest.stage), backupId: r.last.payload.backupId, published: false };
        const two = rest.last.payload.vms.find((v: any) => v.id === 'fa-two');
        return { note: `fa-two labelled ${two.consistency}`, backupId: r.last.payload.backupId, published: true };
      },
    );
  });

  it('message lost while frozen', async () => {
    await labCase(
      'snapshot never reached (message lost while guests frozen)',
      `freeze watchdog thaws at freezeTimeout (${FREEZE_S} s); idleTimeout (8 s) aborts the set`,
      async (run) => {
        const r = await go(run, 'prepare');
        assert.ok(r.last.ok);
        const t0 = Date.now();
        await run.settled(30_000);
        return {
          note: `set aborted after ${((Date.now() - t0) / 1000).toFixed(1)} s`,
          backupId: r.last.payload.backupId,
          published: false,
        };
      },
    );
  });

  it('snapshot arrives after the freeze watchdog', async () => {
    await labCase(
      `snapshot: message delayed past freezeTimeout (${FREEZE_S + 1.5} s)`,
      'guests thawed by the watchdog; the backup is published but labelled crash-consistent, never application',
      async (run) => {
        const r = await go(run, 'prepare');
        assert.ok(r.last.ok);
        await sleep(FREEZE_S * 1000 + 1500);
        const rest = await go(run, 'copy', 'snapshot', r.last.payload);
        assert.ok(rest.last.ok, (rest.last as any).error);
        for (const vm of rest.last.payload.vms) {
          assert.notEqual(vm.consistency, 'application', `${vm.id} must not be labelled application-consistent`);
          assert.equal(vm.snapshot.thawedByWatchdog, true);
        }
        return {
          note: `labelled ${rest.last.payload.vms.map((v: any) => v.consistency).join('/')}, thawedByWatchdog`,
          backupId: r.last.payload.backupId,
          published: true,
        };
      },
    );
  });

  it('malformed message while frozen', async () => {
    await labCase(
      'snapshot: malformed message while guests frozen',
      'refused naming the field; watchdog thaws at freezeTimeout; idleTimeout aborts the set',
      async (run) => {
        const r = await go(run, 'prepare');
        assert.ok(r.last.ok);
        const bad = structuredClone(r.last.payload);
        bad.vms[1].prepare.action = 'thaw';
        const s = await run.step('snapshot', bad);
        assert.match((s as any).error, /\/vms\/1\/prepare\/action must be equal to one of the allowed values/);
        return { note: refusal(s, 'snapshot'), backupId: r.last.payload.backupId, published: false };
      },
    );
  });

  it('redeploy while frozen', async () => {
    await labCase('redeploy while guests are frozen (after prepare)', 'the closing host node thaws the guests at once', async (run) => {
      const r = await go(run, 'prepare');
      assert.ok(r.last.ok);
      const t0 = Date.now();
      await run.unload();
      return { note: `host node closed in ${Date.now() - t0} ms`, backupId: r.last.payload.backupId, published: false };
    });
  });

  it('QEMU killed while frozen', async function () {
    this.timeout(600_000);
    await labCase(
      'snapshot: QEMU of a frozen guest SIGKILLed',
      'refused; the other guest thawed; a dead guest counts as thawed; no fleecing image left; nothing published',
      async (run) => {
        const r = await go(run, 'prepare');
        assert.ok(r.last.ok);
        const pid = Number((await fs.readFile(path.join(labRun, 'fa-two.pid'), 'utf8')).trim());
        process.kill(pid, 'SIGKILL');
        for (let i = 0; i < 100; i++) {
          try {
            process.kill(pid, 0);
          } catch {
            break;
          }
          await sleep(50);
        }
        const s = await run.step('snapshot', r.last.payload);
        return { note: refusal(s, 'snapshot'), backupId: r.last.payload.backupId, published: false, killed: ['fa-two'] };
      },
    );
  });
});
