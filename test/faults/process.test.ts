// Fault injection on the Node-RED process itself: a real `node-red` (v4) with the package linked
// in, killed with SIGKILL at each point of a backup and started again, or redeployed mid-backup
// (full deploy, and a partial deploy that deletes the next node). After a restart the host node
// replays the journal; its report must reach the flow's Catch and Status nodes.
import * as assert from 'node:assert/strict';
import { promises as fs, mkdtempSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pendingUndos } from '../../src/ledger/pending';
import { verifyBackup } from '../../src/verify';
import { startBareWorld, type BareWorld } from './support/bare';
import { hookLog, waitAgent } from './support/guest';
import { ensureLab, labImages, labRefs, labRun } from './support/lab';
import { procFlow, readyForCase, RealNodeRed, type ProcFlowOptions } from './support/nodered';
import { faultCase } from './support/table';
import {
  assertNoFleeceFiles,
  assertRepository,
  assertVmsUnharmed,
  checkGuestFrozen,
  fmtMs,
  guardiansOf,
  journalFrozenMs,
  readJournal,
  repositoryState,
  sleep,
  waitForPath,
  type VmRef,
} from './support/world';

const GROUP = 'Node-RED process';

/**
 * Seed of the random SIGKILL cases: printed in each case's name; VMBACKUP_FAULTS_SEED=<n> replays
 * a run (the same fractions of the clean run's duration, the same choices).
 */
const SEED = (() => {
  const env = process.env.VMBACKUP_FAULTS_SEED;
  if (env !== undefined && env !== '') {
    const n = Number(env);
    if (!Number.isSafeInteger(n) || n < 0)
      throw new Error(`VMBACKUP_FAULTS_SEED must be a non-negative integer, not ${JSON.stringify(env)}`);
    return n >>> 0;
  }
  return (Date.now() ^ (process.pid << 16) ^ Math.floor(Math.random() * 0x1_0000_0000)) >>> 0;
})();

/** mulberry32: a small seeded PRNG, uniform in [0, 1). */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Ctx {
  nr: RealNodeRed;
  journalFile: string;
  repository: string;
  /** inject and wait until `stage` has sent its output; returns that backup set */
  runTo(stage: string): Promise<any>;
  /** the recovery report the flow's Catch node got after a restart, if any */
  recoveryReport(withinMs?: number): Promise<any | undefined>;
}

interface Outcome {
  note: string;
  backupId?: string;
  published: boolean;
}

describe('fault injection: the Node-RED process (SIGKILL and restart, redeploy)', function () {
  this.timeout(300_000);
  let nr: RealNodeRed;
  let bare: BareWorld;
  let repository: string;

  before(async function () {
    this.timeout(600_000);
    await ensureLab();
    bare = await startBareWorld(['alpha', 'beta'], { dataMiB: 24 });
    repository = mkdtempSync(path.join(os.tmpdir(), 'vmb-faults-procrepo-'));
    nr = RealNodeRed.create();
    await nr.start();
  });
  after(async () => {
    await nr?.stop();
    await bare?.host.stop();
    if (repository) await fs.rm(repository, { recursive: true, force: true });
    if (nr) await fs.rm(nr.userDir, { recursive: true, force: true });
  });

  async function procCase(
    name: string,
    expected: string,
    o: { lab: boolean } & Omit<ProcFlowOptions, 'socketDir' | 'repository' | 'journalDir' | 'hostName'>,
    body: (ctx: Ctx) => Promise<Outcome>,
  ) {
    await faultCase(GROUP, name, expected, async () => {
      const refs: VmRef[] = o.lab ? labRefs : bare.refs;
      await readyForCase(nr, o.lab ? labRefs : []);
      const journalDir = mkdtempSync(path.join(os.tmpdir(), 'vmb-faults-journal-'));
      const hostName = o.lab ? 'lab' : 'bare';
      const flow = procFlow({ ...o, socketDir: o.lab ? labRun : bare.host.socketDir, repository, journalDir, hostName });
      await nr.deploy(flow);
      const before = await repositoryState(repository);
      const journalFile = path.join(journalDir, `journal-${hostName}.jsonl`);
      const seenJournal: ReturnType<typeof readJournal> = [];
      const ctx: Ctx = {
        nr,
        journalFile,
        repository,
        runTo: (stage) => nr.runTo(stage),
        async recoveryReport(withinMs = 20_000) {
          const deadline = Date.now() + withinMs;
          while (Date.now() < deadline) {
            const caught = (await nr.nr?.globalValue<any[]>('caught').catch(() => undefined)) ?? [];
            const report = caught.find((c) => /\/recovery$/.test(c.topic ?? ''));
            if (report) return report;
            await sleep(250);
          }
          return undefined;
        },
      };
      const out = await body(ctx);
      seenJournal.push(...readJournal(journalFile));
      // nothing may stay live: the case's own wait (idle watchdog) or a redeploy ended it
      const notes = [out.note];
      await assertNoFleeceFiles([o.lab ? labImages : bare.host.imageDir]);
      if (o.lab) {
        const spans: string[] = [];
        const limit = (o.freezeTimeout ?? 10) * 1000 + 1000;
        for (const vm of labRefs) {
          await waitAgent(vm.qga!); // Node-RED, its guardian or recovery may hold the agent channel a moment longer
          const longest = checkGuestFrozen(vm.id, await hookLog(vm.qga!), limit);
          spans.push(`${vm.id} ${fmtMs(longest)}`);
        }
        notes.push(`frozen max (guest clock): ${spans.join(', ')}`);
      }
      notes.push(await assertVmsUnharmed(refs));
      notes.push(await assertRepository(repository, before, out.backupId, out.published));
      assert.deepEqual(pendingUndos(readJournal(journalFile)), [], 'the journal still lists undos');
      notes.push('journal: nothing pending');
      void journalFrozenMs;
      return notes.join('; ');
    });
  }

  /**
   * Kill Node-RED with SIGKILL (with `killGuardian`, its guardian first, as when a whole service
   * is killed), optionally wait, start it again; returns the recovery report the flow got.
   */
  async function killAndRestart(
    ctx: Ctx,
    downMs = 0,
    killGuardian = false,
    o: { guardianIfAny?: boolean; reportWithinMs?: number | (() => number); whileDown?: () => Promise<void> } = {},
  ): Promise<{ report: any; note: string }> {
    const pending = pendingUndos(readJournal(ctx.journalFile)).map((u) => `${u.kind} ${u.vm}`);
    if (killGuardian) {
      const pids = await guardiansOf(ctx.journalFile);
      // a kill at a random point may fall where no guardian runs (before the first side effect, after the end)
      if (!o.guardianIfAny) assert.ok(pids.length > 0, 'a guardian process watches the set');
      for (const pid of pids) process.kill(pid, 'SIGKILL');
    }
    await nr.kill();
    // evaluated the moment Node-RED is gone (before its guardian may act)
    const reportWithinMs = typeof o.reportWithinMs === 'function' ? o.reportWithinMs() : o.reportWithinMs;
    if (downMs) await sleep(downMs);
    await o.whileDown?.();
    const byGuardian = readJournal(ctx.journalFile)
      .filter((e) => e.data?.by === 'guardian' && e.vm)
      .map((e) => `${e.op} ${e.vm}`);
    const t0 = Date.now();
    await nr.start();
    const restartMs = Date.now() - t0;
    const report = await ctx.recoveryReport(reportWithinMs);
    const statuses = (await nr.global<any[]>('statuses')) ?? [];
    const status = statuses.find((s) => s.source === 'enumerate' && /recovered/.test(s.text));
    const note =
      `journal after the kill: ${pending.length ? pending.join(', ') : 'nothing pending'}; ` +
      (byGuardian.length ? `guardian (Node-RED down): ${byGuardian.join(', ')}; ` : '') +
      `restarted in ${(restartMs / 1000).toFixed(1)} s; ` +
      (report
        ? `Catch got ${report.topic}: ${report.payload.actions.map((a: any) => `${a.kind}${a.ok ? '' : ' FAILED'} ${a.vm?.split('/').pop() ?? ''}${a.by ? ` (by ${a.by})` : ''}`).join(', ')}`
        : 'no recovery report') +
      (status ? `; status "${status.text}"` : '');
    return { report, note };
  }

  it('SIGKILL while guests are frozen, restarted at once', async () => {
    await procCase(
      'SIGKILL after prepare (guests frozen), restart at once',
      'recovery at start thaws both guests; a recovery report reaches Catch and Status nodes',
      { lab: true, lastStage: 'prepare' },
      async (ctx) => {
        const set = await ctx.runTo('prepare');
        const { report, note } = await killAndRestart(ctx);
        assert.ok(report, 'a recovery report reached the Catch node');
        assert.deepEqual(
          report.payload.actions
            .filter((a: any) => a.kind === 'thaw')
            .map((a: any) => a.vm)
            .sort(),
          ['fa-one', 'fa-two'],
        );
        return { note, backupId: set.backupId, published: false };
      },
    );
  });

  it('SIGKILL of Node-RED and its guardian while guests are frozen', async () => {
    await procCase(
      'SIGKILL of Node-RED and its guardian after prepare (guests frozen), restart at once',
      'recovery at start (journal replay) thaws both guests; report reaches Catch and Status nodes',
      { lab: true, lastStage: 'prepare' },
      async (ctx) => {
        const set = await ctx.runTo('prepare');
        const { report, note } = await killAndRestart(ctx, 0, true);
        assert.deepEqual(
          report?.payload.actions
            .filter((a: any) => a.kind === 'thaw' && !a.by)
            .map((a: any) => a.vm)
            .sort(),
          ['fa-one', 'fa-two'],
        );
        return { note, backupId: set.backupId, published: false };
      },
    );
  });

  it('SIGKILL of Node-RED and its guardian while the views are in place', async () => {
    await procCase(
      'SIGKILL of Node-RED and its guardian after snapshot (views in place), restart',
      'recovery at start releases the views live (QEMU shows nothing of ours after); report reaches Catch',
      { lab: false, lastStage: 'snapshot' },
      async (ctx) => {
        const set = await ctx.runTo('snapshot');
        const { report, note } = await killAndRestart(ctx, 0, true);
        assert.deepEqual(
          report?.payload.actions
            .filter((a: any) => a.kind === 'release' && a.ok && !a.by)
            .map((a: any) => a.vm)
            .sort(),
          ['alpha', 'beta'],
          'views released by recovery at start',
        );
        return { note, backupId: set.backupId, published: false };
      },
    );
  });

  it('SIGKILL of Node-RED and its guardian, then QEMU killed while its view is in place', async () => {
    await procCase(
      "SIGKILL of Node-RED and its guardian after snapshot, beta's QEMU killed while Node-RED is down, restart",
      "recovery at start removes beta's fleecing image (its view went with QEMU) and releases alpha's live; both reported; beta restarts on its own image",
      { lab: false, lastStage: 'snapshot' },
      async (ctx) => {
        const set = await ctx.runTo('snapshot');
        const fleeces: string[] = set.vms.find((v: any) => v.id === 'beta').snapshot.view.ref.disks.map((d: any) => d.fleece);
        let leftByQemu = 0;
        const { report, note } = await killAndRestart(ctx, 0, true, {
          whileDown: async () => {
            await bare.kill('beta');
            // what the dead QEMU left: its fleecing image (the case proves nothing if there is none)
            for (const f of fleeces)
              if (
                await fs.stat(f).then(
                  () => true,
                  () => false,
                )
              )
                leftByQemu++;
          },
        });
        assert.equal(leftByQemu, fleeces.length, 'the killed QEMU left its fleecing image');
        for (const f of fleeces) await assert.rejects(fs.stat(f), `recovery removed ${f}`);
        const released = report?.payload.actions
          .filter((a: any) => a.kind === 'release' && a.ok && !a.by)
          .map((a: any) => a.vm)
          .sort();
        assert.deepEqual(released, ['alpha', 'beta'], 'both views reported released by recovery at start');
        const restarted = await bare.restore();
        assert.deepEqual(restarted, ['beta']);
        return { note: `${note}; ${await bare.checkImages()}, restarted beta`, backupId: set.backupId, published: false };
      },
    );
  });

  it('SIGKILL while guests are frozen, Node-RED left down for 15 s', async () => {
    await procCase(
      'SIGKILL after prepare (guests frozen), Node-RED down 15 s',
      'the guests are thawed within freezeTimeout + 1 s although no Node-RED runs (guardian process); restart finds nothing frozen',
      { lab: true, lastStage: 'prepare' },
      async (ctx) => {
        const set = await ctx.runTo('prepare');
        const { report, note } = await killAndRestart(ctx, 15_000);
        assert.ok(
          report?.payload.actions.some((a: any) => a.kind === 'thaw' && a.by === 'guardian'),
          'the report says the guardian thawed',
        );
        return { note, backupId: set.backupId, published: false };
      },
    );
  });

  it('SIGKILL while the views are in place', async () => {
    await procCase(
      'SIGKILL after snapshot (views in place), restart',
      'the views are released (by the guardian or by recovery at start); report reaches Catch; nothing published',
      { lab: false, lastStage: 'snapshot' },
      async (ctx) => {
        const set = await ctx.runTo('snapshot');
        const { report, note } = await killAndRestart(ctx);
        assert.deepEqual(
          [...new Set(report?.payload.actions.filter((a: any) => a.kind === 'release' && a.ok).map((a: any) => a.vm))].sort(),
          ['alpha', 'beta'],
          'views released and reported',
        );
        return { note, backupId: set.backupId, published: false };
      },
    );
  });

  it('SIGKILL while VMs are saved/paused', async () => {
    await procCase(
      'SIGKILL after prepare (saved-state: VMs paused), restart',
      'recovery resumes the VMs and removes the partial backup; report reaches Catch',
      { lab: false, lastStage: 'prepare', fallback: 'saved-state' },
      async (ctx) => {
        const set = await ctx.runTo('prepare');
        const { report, note } = await killAndRestart(ctx);
        assert.ok(
          report?.payload.actions.some((a: any) => a.kind === 'resume' && a.ok),
          'VMs resumed by recovery',
        );
        return { note, backupId: set.backupId, published: false };
      },
    );
  });

  it('SIGKILL during the copy', async () => {
    await procCase(
      'SIGKILL while copying, restart',
      'recovery removes the partial (staging) backup and releases the views; nothing published; earlier backups intact',
      { lab: false, lastStage: 'copy' },
      async (ctx) => {
        await ctx.runTo('post-snapshot');
        const set = await ctx.nr.global('post_snapshot');
        const staging = path.join(repository, 'bare', 'alpha', `.partial-${set.backupId}`);
        await waitForPath(staging, 10_000);
        const { report, note } = await killAndRestart(ctx);
        assert.ok(
          report?.payload.actions.some((a: any) => /discard/.test(a.kind)),
          'the partial backup was removed',
        );
        return { note, backupId: set.backupId, published: false };
      },
    );
  });

  it('SIGKILL before any side effect', async () => {
    await procCase(
      'SIGKILL after classify (no side effect yet), restart',
      'nothing to recover: no report, nothing pending',
      { lab: false, lastStage: 'classify' },
      async (ctx) => {
        const set = await ctx.runTo('classify');
        await nr.kill();
        await nr.start();
        const report = await ctx.recoveryReport(3000);
        assert.equal(report, undefined, 'no recovery report when nothing was interrupted');
        return { note: 'restarted; no recovery report', backupId: set.backupId, published: false };
      },
    );
  });

  // ---- SIGKILL at a random point of a whole backup (enumerate through copy) ----
  //
  // The flow runs end to end; Node-RED is SIGKILLed after a delay drawn uniformly over the
  // duration of a clean run of the same flow (measured once per flow, in this group), sometimes
  // with its guardian, sometimes left down a few seconds. After the restart: the same checks as
  // every other case, and every backup in the repository passes the product's own verifier
  // (manifest, sha256 of every file, qemu-img check); nothing partial anywhere; the set is all or
  // none (every VM of it published, or none).

  type FlowKey = 'lab' | 'bare' | 'bare-saved';
  const flowOf: Record<FlowKey, { lab: boolean; fallback?: string; label: string }> = {
    lab: { lab: true, label: 'lab guests (freeze)' },
    bare: { lab: false, label: 'bare VMs (checkpoint)' },
    'bare-saved': { lab: false, fallback: 'saved-state', label: 'bare VMs (saved-state)' },
  };
  const cleanMs = new Map<FlowKey, number>();

  /** `<root>/<host>/<vm>/<backupId>` directories, published or staging, and any `.partial-*` path. */
  async function backupDirs(root: string): Promise<{ published: string[]; partial: string[] }> {
    const published: string[] = [];
    const partial: string[] = [];
    const walk = async (dir: string, depth: number) => {
      for (const e of await fs.readdir(dir, { withFileTypes: true }).catch(() => [])) {
        const p = path.join(dir, e.name);
        if (e.name.startsWith('.partial-')) partial.push(path.relative(root, p));
        else if (e.isDirectory()) {
          if (depth === 2) published.push(path.relative(root, p));
          else await walk(p, depth + 1);
        }
      }
    };
    await walk(root, 0);
    return { published: published.sort(), partial: partial.sort() };
  }

  /** verifyBackup (src/verify.ts: manifest, size and sha256 of every file, qemu-img check) of every published backup. */
  async function verifyAll(): Promise<string> {
    const { published, partial } = await backupDirs(repository);
    assert.deepEqual(partial, [], 'partial (staging) directories left in the repository');
    assert.ok(published.length > 0, 'the repository holds no backup (the clean run published some)');
    for (const rel of published) {
      const r = await verifyBackup(path.join(repository, rel));
      assert.ok(r.ok, `verifyBackup ${rel}: ${r.problems.map((p) => `${path.relative(repository, p.file)}: ${p.problem}`).join('; ')}`);
    }
    return `verifyBackup: all ${published.length} backups in the repository OK`;
  }

  /** A clean run of the whole flow (enumerate through copy): published, verified; measures its duration. */
  async function cleanRun(key: FlowKey): Promise<void> {
    const f = flowOf[key];
    await procCase(
      `clean run, ${f.label}: whole flow (measures the duration the random kills are drawn over)`,
      'published, every backup verified (verifyBackup)',
      { lab: f.lab, lastStage: 'copy', ...(f.fallback ? { fallback: f.fallback } : {}) },
      async (ctx) => {
        const t0 = Date.now();
        const set = await ctx.runTo('copy');
        const ms = Date.now() - t0;
        cleanMs.set(key, ms);
        const ids = (f.lab ? labRefs : bare.refs).map((v) => v.id).sort();
        const { published } = await backupDirs(repository);
        assert.deepEqual(
          published
            .filter((d) => path.basename(d) === set.backupId)
            .map((d) => d.split(path.sep)[1])
            .sort(),
          ids,
          'every VM of the set published',
        );
        return { note: `${fmtMs(ms)} inject to copy output; ${await verifyAll()}`, backupId: set.backupId, published: true };
      },
    );
  }

  const rng = mulberry32(SEED);
  const randomCases: { key: FlowKey; guardian: boolean; downMs: number; u: number }[] = [
    { key: 'lab', guardian: false, downMs: 0 },
    { key: 'lab', guardian: true, downMs: 0 },
    { key: 'lab', guardian: false, downMs: 4000 },
    { key: 'bare', guardian: true, downMs: 0 },
    { key: 'bare-saved', guardian: false, downMs: 3000 },
    { key: 'bare', guardian: true, downMs: 3000 },
  ].map((c) => ({ ...(c as { key: FlowKey; guardian: boolean; downMs: number }), u: rng() }));

  randomCases.forEach((c, i) => {
    const f = flowOf[c.key];
    const how = `${c.guardian ? 'Node-RED and its guardian' : 'Node-RED'} SIGKILLed, ${c.downMs ? `down ${c.downMs / 1000} s` : 'restart at once'}`;
    const name = `random kill #${i + 1} (seed ${SEED}, u=${c.u.toFixed(4)}), ${f.label}: ${how}`;
    it(name, async function () {
      if (!cleanMs.has(c.key)) await cleanRun(c.key);
      await procCase(
        name,
        "at u x the clean run's duration; after recovery every VM running, thawed, nothing of ours in its graph; the set published whole (every VM, verified) or not at all; every backup passes verifyBackup; no .partial-* left",
        { lab: f.lab, lastStage: 'copy', ...(f.fallback ? { fallback: f.fallback } : {}) },
        async (ctx) => {
          const delayMs = Math.round(c.u * cleanMs.get(c.key)!);
          const before = new Set((await backupDirs(repository)).published);
          await ctx.nr.inject('go');
          await sleep(delayMs);
          let reached: ReturnType<typeof readJournal> = [];
          const { note } = await killAndRestart(ctx, c.downMs, c.guardian, {
            guardianIfAny: true,
            reportWithinMs: () => {
              // the journal as Node-RED left it (the guardian's lines come after the kill)
              reached = readJournal(ctx.journalFile).filter((e) => e.data?.by !== 'guardian');
              // nothing pending: no recovery to wait for (a short wait still catches a report)
              return pendingUndos(reached).length ? 20_000 : 3000;
            },
          });
          const ids = (f.lab ? labRefs : bare.refs).map((v) => v.id).sort();
          const fresh = (await backupDirs(repository)).published.filter((d) => !before.has(d));
          const setIds = [...new Set(fresh.map((d) => path.basename(d)))];
          assert.ok(setIds.length <= 1, `more than one new backup set published: ${setIds.join(', ')}`);
          const published = setIds.length === 1;
          if (published)
            assert.deepEqual(
              fresh.map((d) => d.split(path.sep)[1]).sort(),
              ids,
              `set ${setIds[0]} published for only some of its VMs (all or none)`,
            );
          const journalIds = [...new Set([...reached, ...readJournal(ctx.journalFile)].map((e) => e.backupId).filter(Boolean))];
          assert.ok(journalIds.length <= 1, `the case's journal names more than one backup set: ${journalIds.join(', ')}`);
          const backupId = setIds[0] ?? journalIds[0];
          if (setIds.length && journalIds.length) assert.equal(setIds[0], journalIds[0], 'the set published is the one journalled');
          const ops = reached.filter((e) => e.vm).map((e) => `${e.op}/${e.phase}`);
          const last = ops.length ? ops[ops.length - 1] : 'nothing journalled yet';
          return {
            note:
              `killed ${delayMs} ms into the run (clean run ${fmtMs(cleanMs.get(c.key))}; last journal line at the kill: ${last}); ${note}; ` +
              `${published ? `set ${setIds[0]} published whole` : 'set not published'}; ${await verifyAll()}`,
            backupId,
            published,
          };
        },
      );
    });
  });

  it('full redeploy while guests are frozen', async () => {
    await procCase(
      'full redeploy after prepare (guests frozen)',
      'the closing host node thaws the guests at once; the new host node finds nothing to recover',
      { lab: true, lastStage: 'prepare' },
      async (ctx) => {
        const set = await ctx.runTo('prepare');
        const t0 = Date.now();
        const flow = procFlow({
          socketDir: labRun,
          repository,
          journalDir: path.dirname(ctx.journalFile),
          hostName: 'lab',
          lastStage: 'copy',
        });
        await ctx.nr.deploy(flow, 'full');
        return { note: `redeployed in ${Date.now() - t0} ms`, backupId: set.backupId, published: false };
      },
    );
  });

  it('full redeploy while the views are in place', async () => {
    await procCase(
      'full redeploy after snapshot (views in place)',
      'the closing host node releases the views at once; nothing published',
      { lab: false, lastStage: 'snapshot' },
      async (ctx) => {
        const set = await ctx.runTo('snapshot');
        await ctx.nr.deploy(
          procFlow({
            socketDir: bare.host.socketDir,
            repository,
            journalDir: path.dirname(ctx.journalFile),
            hostName: 'bare',
            lastStage: 'copy',
          }),
          'full',
        );
        return { note: 'redeployed', backupId: set.backupId, published: false };
      },
    );
  });

  it('full redeploy during the copy', async () => {
    await procCase(
      'full redeploy while copying',
      'the copy is cancelled, views released, staging removed, nothing published',
      { lab: false, lastStage: 'copy' },
      async (ctx) => {
        await ctx.runTo('post-snapshot');
        const set = await ctx.nr.global('post_snapshot');
        const staging = path.join(repository, 'bare', 'alpha', `.partial-${set.backupId}`);
        await waitForPath(staging, 10_000);
        await ctx.nr.deploy(
          procFlow({
            socketDir: bare.host.socketDir,
            repository,
            journalDir: path.dirname(ctx.journalFile),
            hostName: 'bare',
            lastStage: 'copy',
          }),
          'full',
        );
        const published = await fs.stat(path.join(repository, 'bare', 'alpha', set.backupId)).then(
          () => true,
          () => false,
        );
        return { note: `redeployed mid-copy${published ? ' (copy had already published)' : ''}`, backupId: set.backupId, published };
      },
    );
  });

  it('partial deploy deletes the next node mid-backup', async () => {
    await procCase(
      '"modified nodes" deploy deletes the copy node after post-snapshot',
      'the host node stays; its idleTimeout (5 s) aborts the orphaned set: views released, nothing published',
      { lab: false, lastStage: 'copy', idleTimeout: 5 },
      async (ctx) => {
        const flowOpts = {
          socketDir: bare.host.socketDir,
          repository,
          journalDir: path.dirname(ctx.journalFile),
          hostName: 'bare',
          idleTimeout: 5,
        } as const;
        // stop after post-snapshot: the copy node is deleted before the message reaches it
        await ctx.nr.deploy(procFlow({ ...flowOpts, lastStage: 'post-snapshot' }), 'nodes');
        const set = await ctx.runTo('post-snapshot');
        await ctx.nr.deploy(procFlow({ ...flowOpts, lastStage: 'post-snapshot', without: 'copy' }), 'nodes');
        await sleep(8000);
        return { note: 'copy node deleted; set aborted by the idle watchdog', backupId: set.backupId, published: false };
      },
    );
  });
});
