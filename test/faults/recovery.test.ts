// Recovery that trusts nothing and touches only what it made (docs/faults.md). A real `node-red`
// process on bare QEMU VMs is SIGKILLed (with its guardian, so that recovery at start has the work
// to do) while the VMs run on overlays; then the journal, the config or the repository is
// changed the way the independent tester found (a `null` line, a staging line naming a directory
// outside the repository, the host renamed, the journal directory removed, a second Node-RED on
// the same repository) and Node-RED is started again. After every case, from outside the product:
// every VM running and on its own image (QMP), no overlay file, nothing pending in any journal
// of the directory, no staging directory left and earlier backups byte-identical, no guardian left.
import * as assert from 'node:assert/strict';
import { promises as fs, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Journal } from '../../src/journal/journal';
import { pendingUndos } from '../../src/ledger/pending';
import { BackupHost, DEFAULT_TIMEOUTS } from '../../src/pipeline/backup-host';
import { QemuProvider } from '../../src/providers/qemu/qemu-provider';
import { ArtifactRepository } from '../../src/repository/repository';
import { OWNER_FILE } from '../../src/repository/staging-owner';
import { journalPath, recover } from '../../src/recovery';
import { startBareWorld, type BareWorld } from './support/bare';
import { InProcessRun } from './support/inproc';
import { helper } from '../nodes/flow-fixture';
import { procFlow, RealNodeRed, type ProcFlowOptions } from './support/nodered';
import { faultCase } from './support/table';
import {
  assertNoFleeceFiles,
  assertRepository,
  assertVmsUnharmed,
  guardiansOf,
  readJournal,
  repositoryState,
  sleep,
} from './support/world';

const GROUP = 'recovery';

interface Outcome {
  note: string;
  backupId?: string;
  published: boolean;
}

/** Every journal-*.jsonl of the directory has nothing pending. */
function assertNothingPending(journalDir: string): string {
  const files = readdirSync(journalDir).filter((n) => /^journal-.*\.jsonl$/.test(n));
  for (const f of files) assert.deepEqual(pendingUndos(readJournal(path.join(journalDir, f))), [], `${f} still lists undos`);
  return `journals (${files.join(', ') || 'none'}): nothing pending`;
}

const actionsText = (report: any) =>
  (report?.payload?.actions ?? [])
    .map((a: any) => `${a.kind}${a.ok ? '' : ' (!)'}${a.vm ? ` ${String(a.vm).split('/').pop()}` : ''}`)
    .join(', ');

describe('fault injection: recovery touches only what it made', function () {
  this.timeout(300_000);
  let nr: RealNodeRed;
  let bare: BareWorld;
  let repository: string;

  before(async function () {
    this.timeout(600_000);
    bare = await startBareWorld(['alpha', 'beta'], { dataMiB: 8 });
    repository = mkdtempSync(path.join(os.tmpdir(), 'vmb-faults-recrepo-'));
    nr = RealNodeRed.create();
    await nr.start();
  });
  after(async () => {
    await nr?.stop();
    await bare?.host.stop();
    if (repository) await fs.rm(repository, { recursive: true, force: true });
    if (nr) await fs.rm(nr.userDir, { recursive: true, force: true });
  });

  interface Ctx {
    journalDir: string;
    hostName: string;
    flow(o?: Partial<ProcFlowOptions>): ReturnType<typeof procFlow>;
    runTo(stage: string): Promise<any>;
    /** SIGKILL the guardians of this journal directory, then Node-RED: nothing undoes anything */
    killAll(): Promise<void>;
    /** start Node-RED again; the recovery report its Catch node got */
    restart(): Promise<any | undefined>;
  }

  async function nrCase(
    name: string,
    expected: string,
    o: Partial<ProcFlowOptions> & { lastStage: ProcFlowOptions['lastStage'] },
    body: (c: Ctx) => Promise<Outcome>,
  ) {
    await faultCase(GROUP, name, expected, async () => {
      if (!nr.nr) await nr.start();
      for (const key of ['caught', 'statuses', 'enumerate', 'classify', 'prepare', 'snapshot', 'post_snapshot', 'copy'])
        await nr.nr!.deleteGlobal(key);
      const journalDir = mkdtempSync(path.join(os.tmpdir(), 'vmb-faults-recjournal-'));
      const ctx: Ctx = {
        journalDir,
        hostName: 'bare',
        flow: (more = {}) => procFlow({ socketDir: bare.host.socketDir, repository, journalDir, hostName: 'bare', ...o, ...more }),
        runTo: (stage) => nr.runTo(stage),
        async killAll() {
          for (const pid of await guardiansOf(journalDir)) process.kill(pid, 'SIGKILL');
          await nr.kill();
        },
        async restart() {
          await nr.start();
          const deadline = Date.now() + 20_000;
          while (Date.now() < deadline) {
            const caught = (await nr.nr?.globalValue<any[]>('caught').catch(() => undefined)) ?? [];
            const report = caught.find((c) => /\/recovery$/.test(c.topic ?? ''));
            if (report) return report;
            await sleep(250);
          }
          return undefined;
        },
      };
      await nr.deploy(ctx.flow());
      const before = await repositoryState(repository);
      const out = await body(ctx);
      const notes = [out.note];
      await assertNoFleeceFiles([bare.host.imageDir]);
      notes.push(await assertVmsUnharmed(bare.refs));
      notes.push(await assertRepository(repository, before, out.backupId, out.published));
      notes.push(assertNothingPending(journalDir));
      for (let i = 0; i < 50 && (await guardiansOf(journalDir)).length > 0; i++) await sleep(200);
      assert.deepEqual(await guardiansOf(journalDir), [], 'guardian processes left');
      await fs.rm(journalDir, { recursive: true, force: true });
      return notes.join('; ');
    });
  }

  /** The host node is ready again: a whole backup runs and is published. */
  async function backupWorks(ctx: Ctx, hostName = 'bare'): Promise<string> {
    await nr.deploy(ctx.flow({ hostName, lastStage: 'copy' }));
    const copied = await ctx.runTo('copy');
    assert.equal(copied.vms.length, 2);
    return `next backup ${copied.backupId} published`;
  }

  it('a null line and other non-entries in the journal', async () => {
    await nrCase(
      'journal lines that parse but are not entries (null, wrong types, unknown op, unsafe ids), after a kill with views in place',
      'host ready; every bad line skipped and counted in the report with its reason; the views taken out; a later backup runs',
      { lastStage: 'snapshot' },
      async (ctx) => {
        const set = await ctx.runTo('snapshot');
        await ctx.killAll();
        const file = journalPath(ctx.journalDir, 'bare');
        const t = new Date().toISOString();
        const bad = [
          'null',
          '[]',
          '"x"',
          JSON.stringify({ t, backupId: set.backupId, vm: 'alpha', op: 'explode', phase: 'intent' }),
          JSON.stringify({ t, backupId: '../..', vm: 'alpha', op: 'freeze', phase: 'intent' }),
          JSON.stringify({ t, backupId: set.backupId, vm: 7, op: 'thaw', phase: 'done' }),
        ];
        await fs.appendFile(file, bad.join('\n') + '\n');
        const report = await ctx.restart();
        assert.ok(report, 'a recovery report reached Catch');
        assert.doesNotMatch(nr.log, /not ready/);
        const skipped = report.payload.actions.find((a: any) => a.kind === 'skip-lines');
        assert.match(skipped?.error ?? '', /^6 journal line\(s\) skipped.*not an object \(null\)/);
        assert.deepEqual(
          report.payload.actions
            .filter((a: any) => a.kind === 'release' && a.ok)
            .map((a: any) => a.vm)
            .sort(),
          ['alpha', 'beta'],
        );
        const next = await backupWorks(ctx);
        return {
          note: `report: ${actionsText(report)}; "${skipped.error.slice(0, 70)}~"; ${next}`,
          backupId: set.backupId,
          published: false,
        };
      },
    );
  });

  it('a staging line naming a directory outside the repository', async () => {
    const victim = mkdtempSync(path.join(os.tmpdir(), 'vmb-faults-victim-'));
    try {
      await nrCase(
        'journal staging line naming a directory outside the repository (plain, and shaped like a staging directory)',
        'neither directory touched (recovery removes only the staging directory it computes); reported; the views taken out',
        { lastStage: 'snapshot' },
        async (ctx) => {
          const set = await ctx.runTo('snapshot');
          await ctx.killAll();
          const shaped = path.join(victim, 'alpha', `.partial-${set.backupId}`);
          await fs.mkdir(shaped, { recursive: true });
          await fs.writeFile(path.join(shaped, 'keep'), 'not ours');
          await fs.writeFile(path.join(victim, 'keep'), 'not ours');
          const t = new Date().toISOString();
          await fs.appendFile(
            journalPath(ctx.journalDir, 'bare'),
            [
              JSON.stringify({ t, backupId: set.backupId, vm: 'alpha', op: 'staging', phase: 'intent', data: { dir: shaped } }),
              JSON.stringify({ t, backupId: set.backupId, vm: 'beta', op: 'staging', phase: 'intent', data: { dir: victim } }),
            ].join('\n') + '\n',
          );
          const report = await ctx.restart();
          assert.equal(readFileSync(path.join(shaped, 'keep'), 'utf8'), 'not ours');
          assert.equal(readFileSync(path.join(victim, 'keep'), 'utf8'), 'not ours');
          const refused = (report?.payload.actions.filter((a: any) => a.kind === 'refuse') ?? []).map((a: any) => a.error).sort();
          assert.equal(refused.length, 2, `both refused and reported: ${actionsText(report)}`);
          assert.match(refused.join('\n'), /is not a staging directory of backup/);
          assert.match(refused.join('\n'), /is not this set's/);
          assert.ok(report.payload.actions.some((a: any) => a.kind === 'release' && a.ok));
          return { note: `report: ${actionsText(report)}; both directories intact`, backupId: set.backupId, published: false };
        },
      );
    } finally {
      await fs.rm(victim, { recursive: true, force: true });
    }
  });

  it('the host renamed in the config after a crash', async () => {
    await nrCase(
      'host renamed in the config (bare -> bare-renamed) after Node-RED and its guardian were killed with views in place',
      "the node finds its sets in the journal of its old name (lines stamped with its id): views taken out, reported, old journal emptied; a backup under the new name runs on the VMs' own images",
      { lastStage: 'snapshot' },
      async (ctx) => {
        const set = await ctx.runTo('snapshot');
        await ctx.killAll();
        const flowsFile = path.join(nr.userDir, 'flows.json');
        const flows = JSON.parse(readFileSync(flowsFile, 'utf8')) as any[];
        Object.assign(
          flows.find((n) => n.id === 'fh'),
          { name: 'bare-renamed', hostName: 'bare-renamed' },
        );
        writeFileSync(flowsFile, JSON.stringify(flows));
        const report = await ctx.restart();
        assert.ok(report, 'a recovery report reached Catch');
        const releases = report.payload.actions.filter((a: any) => a.kind === 'release' && a.ok);
        assert.deepEqual(releases.map((a: any) => a.vm).sort(), ['alpha', 'beta']);
        assert.equal(releases[0].journal, journalPath(ctx.journalDir, 'bare'));
        const next = await backupWorks(ctx, 'bare-renamed');
        await fs.rm(path.join(repository, 'bare-renamed'), { recursive: true, force: true });
        return { note: `report: ${actionsText(report)} (from journal-bare.jsonl); ${next}`, backupId: set.backupId, published: false };
      },
    );
  });

  it('the journal directory removed between two backups', async () => {
    await nrCase(
      'journal directory removed between two backups, then Node-RED and its guardian killed with views in place',
      "the second backup's intents land in a re-created journal at its path; recovery takes the views out and reports it",
      { lastStage: 'snapshot', idleTimeout: 5 },
      async (ctx) => {
        await ctx.runTo('snapshot');
        for (let i = 0; i < 100 && pendingUndos(readJournal(journalPath(ctx.journalDir, 'bare'))).length > 0; i++) await sleep(200); // idle watchdog merges
        await fs.rm(ctx.journalDir, { recursive: true, force: true });
        const set = await ctx.runTo('snapshot');
        const pending = pendingUndos(readJournal(journalPath(ctx.journalDir, 'bare'))).map((u) => `${u.kind} ${u.vm}`);
        assert.deepEqual(
          pending.sort(),
          ['release alpha', 'release beta', 'untrack alpha', 'untrack beta'],
          'the intents are in the journal file at its path',
        );
        await ctx.killAll();
        const report = await ctx.restart();
        assert.deepEqual(
          report?.payload.actions
            .filter((a: any) => a.kind === 'release' && a.ok)
            .map((a: any) => a.vm)
            .sort(),
          ['alpha', 'beta'],
        );
        return {
          note: `journal re-created with: ${pending.join(', ')}; report: ${actionsText(report)}`,
          backupId: set.backupId,
          published: false,
        };
      },
    );
  });

  it('a second Node-RED on the same repository starts while the first one backs up', async () => {
    await nrCase(
      'a second Node-RED (same repository, same and other host name) starts while the first has live staging directories',
      "the second one's recovery leaves them alone (their owner record names a live process); the first one's set stays whole until its own redeploy undoes it",
      { lastStage: 'prepare', fallback: 'saved-state' },
      async (ctx) => {
        const set = await ctx.runTo('prepare'); // saved states are written into the staging directories
        const staging = ['alpha', 'beta'].map((vm) => path.join(repository, 'bare', vm, `.partial-${set.backupId}`));
        for (const dir of staging) await fs.access(dir);
        const notes: string[] = [];
        for (const hostName of ['bare', 'other']) {
          const second = new InProcessRun({
            socketDir: bare.host.socketDir,
            repository,
            journalDir: mkdtempSync(path.join(os.tmpdir(), 'vmb-faults-recjournal2-')),
            hostName,
          });
          try {
            await second.load();
            await second.host();
            const actions = (helper.getNode('host') as any).lastRecovery as any[];
            assert.deepEqual(
              actions.filter((a) => /discard/.test(a.kind)),
              [],
              'the second Node-RED removed nothing',
            );
            notes.push(
              `second Node-RED as host "${hostName}": ${actions.length ? actions.map((a) => a.kind).join(', ') : 'no recovery action'}`,
            );
          } finally {
            await second.stop();
            await fs.rm(second.o.journalDir, { recursive: true, force: true });
          }
          for (const dir of staging)
            await fs.access(dir).catch(() => assert.fail(`${dir} was removed by the second Node-RED (host ${hostName})`));
        }
        // the first one's set is still whole: its own redeploy undoes it (VMs resumed, staging removed)
        await nr.deploy(ctx.flow(), 'full');
        for (
          let i = 0;
          i < 100 &&
          (
            await Promise.all(
              staging.map((d) =>
                fs.access(d).then(
                  () => true,
                  () => false,
                ),
              ),
            )
          ).some(Boolean);
          i++
        )
          await sleep(100);
        return {
          note: `${notes.join('; ')}; live staging directories intact; then undone by the first one's redeploy`,
          backupId: set.backupId,
          published: false,
        };
      },
    );
  });

  it('a staging directory renamed by someone during the copy', async () => {
    await nrCase(
      'staging directory renamed by someone (.partial-<id> -> .partial-<id>-moved) during the copy, then Node-RED restarted',
      'the copy fails (or had finished); the renamed directory, which no journal names, is removed at the next start because its owner record names a process that is gone; reported',
      { lastStage: 'copy' },
      async (ctx) => {
        await nr.inject('go');
        const set = await nr.waitGlobal<any>('post_snapshot', 120_000);
        const staging = path.join(repository, 'bare', 'alpha', `.partial-${set.backupId}`);
        // renamed once the copy writes into it: its owner record is made right after the directory
        // (renamed in between, the directory cannot be proven ours and is left and reported instead)
        for (
          let i = 0;
          i < 2000 &&
          !(await fs.access(path.join(staging, OWNER_FILE)).then(
            () => true,
            () => false,
          ));
          i++
        )
          await sleep(5);
        const moved = `${staging}-moved`;
        const renamed = await fs.rename(staging, moved).then(
          () => true,
          () => false,
        );
        for (let i = 0; i < 600 && (await nr.global('copy')) === undefined && !((await nr.global<any[]>('caught')) ?? []).length; i++)
          await sleep(100);
        const published = await fs.access(path.join(repository, 'bare', 'alpha', set.backupId)).then(
          () => true,
          () => false,
        );
        await nr.stop();
        const report = await ctx.restart();
        if (renamed) {
          assert.ok(
            report?.payload.actions.some((a: any) => a.kind === 'discard-unjournalled' && a.ok && a.path === moved),
            `the renamed directory is removed: ${actionsText(report)}`,
          );
          await assert.rejects(fs.access(moved));
        }
        return {
          note: `${renamed ? 'renamed mid-copy' : 'copy was over before the rename'}; ${published ? 'published' : 'not published'}; report: ${actionsText(report)}`,
          backupId: set.backupId,
          published,
        };
      },
    );
  });

  it('the journal file replaced by a symbolic link or a directory', async () => {
    const target = mkdtempSync(path.join(os.tmpdir(), 'vmb-faults-linktarget-'));
    try {
      for (const kind of ['symbolic link', 'directory'] as const) {
        await faultCase(
          GROUP,
          `host start: the journal file is a ${kind}`,
          "every stage refused naming journalDir and the cause; the link's target untouched; nothing done",
          async () => {
            const journalDir = mkdtempSync(path.join(os.tmpdir(), 'vmb-faults-recjournal-'));
            const file = path.join(journalDir, 'journal-faulthost.jsonl');
            await fs.writeFile(path.join(target, 'precious'), 'keep\n');
            if (kind === 'symbolic link') await fs.symlink(path.join(target, 'precious'), file);
            else await fs.mkdir(file);
            const run = new InProcessRun({ socketDir: bare.host.socketDir, repository, journalDir });
            try {
              await run.load();
              const r = await run.step('enumerate', '');
              assert.equal(r.ok, false);
              assert.match(
                (r as any).error,
                kind === 'symbolic link'
                  ? /^journalDir: .*ELOOP: the journal file is a symbolic link/
                  : /^journalDir: .*EISDIR: a directory is where the journal file should be/,
              );
              assert.equal(readFileSync(path.join(target, 'precious'), 'utf8'), 'keep\n');
              return `enumerate refused: "${(r as any).error.slice(0, 120)}~"; ${await assertVmsUnharmed(bare.refs)}`;
            } finally {
              await run.stop();
              await fs.rm(journalDir, { recursive: true, force: true });
            }
          },
        );
      }
    } finally {
      await fs.rm(target, { recursive: true, force: true });
    }
  });

  // ---- the domain directly, on the same VMs: what a second host node or someone's edits leave ----

  async function domainCase(
    name: string,
    expected: string,
    body: (h: { host: BackupHost; journal: Journal; root: string }) => Promise<Outcome>,
  ) {
    await faultCase(GROUP, name, expected, async () => {
      const root = bare.host.repository;
      const before = await repositoryState(root);
      const journalDir = mkdtempSync(path.join(os.tmpdir(), 'vmb-faults-recjournal-'));
      const journal = new Journal(journalPath(journalDir, 'faulthost'), { host: 'faulthost', owner: 'node-a' });
      const provider = new QemuProvider({ socketDir: bare.host.socketDir });
      const host = new BackupHost(provider, journal, { hostName: 'faulthost', repositoryRoot: root, timeouts: DEFAULT_TIMEOUTS });
      let out: Outcome;
      try {
        out = await body({ host, journal, root });
        for (let i = 0; i < 300 && host.live.size > 0; i++) await sleep(100);
      } finally {
        await host.closeAll('test over');
        await provider.close();
        journal.close();
      }
      await assertNoFleeceFiles([bare.host.imageDir]);
      const notes = [
        out.note,
        await assertVmsUnharmed(bare.refs),
        await assertRepository(root, before, out.backupId, out.published),
        assertNothingPending(journalDir),
      ];
      await fs.rm(journalDir, { recursive: true, force: true });
      return notes.join('; ');
    });
  }

  const upToCopy = async (host: BackupHost) => {
    const set = await host.enumerate();
    return host.postSnapshot(await host.snapshot(await host.prepare(host.classify(set, 'checkpoint'))));
  };

  it('a repository root that is a symbolic link', async () => {
    const link = path.join(mkdtempSync(path.join(os.tmpdir(), 'vmb-faults-rootlink-')), 'repo');
    await fs.symlink(bare.host.repository, link);
    try {
      await domainCase(
        'repository root set to a symbolic link; a crash leaves a journalled staging directory',
        "the root is the user's setting: recovery removes the set's staging directory through it (and nothing else)",
        async ({ host }) => {
          const journal = new Journal(host.journal.file, { host: 'faulthost', owner: 'node-a' });
          const repo = new ArtifactRepository(link);
          const backupId = '20260101T000000Z-rootln';
          const dir = repo.stagingDir('faulthost', 'alpha', backupId);
          journal.append({ backupId, vm: 'alpha', op: 'staging', phase: 'intent', data: { dir } });
          await repo.openStaging('faulthost', 'alpha', backupId);
          const actions = await recover(journal, host.provider, repo, 30_000, { hostName: 'faulthost', owner: 'node-a' });
          journal.close();
          assert.deepEqual(
            actions.map((a) => `${a.kind}:${a.ok}`),
            ['discard:true'],
          );
          await assert.rejects(fs.access(dir));
          return { note: `recovery through the linked root: ${actions.map((a) => a.kind).join(', ')}`, published: false };
        },
      );
    } finally {
      await fs.rm(path.dirname(link), { recursive: true, force: true });
    }
  });

  it('two host nodes in one Node-RED on one repository', async () => {
    await domainCase(
      'two host nodes of one Node-RED, same host name, one repository: the second starts while the first copies',
      "the second's recovery touches neither the first's journal lines nor its live staging directories; the first publishes",
      async ({ host, journal, root }) => {
        const set = await upToCopy(host);
        const copying = host.copy(set, { concurrency: 2, compress: false });
        const staging = path.join(root, 'faulthost', 'alpha', `.partial-${set.backupId}`);
        for (
          let i = 0;
          i < 400 &&
          !(await fs.access(staging).then(
            () => true,
            () => false,
          ));
          i++
        )
          await sleep(5);
        // the second node: its own id, the same journal file (same name), the first one live beside it
        const second = new Journal(journal.file, { host: 'faulthost', owner: 'node-b' });
        const provider2 = new QemuProvider({ socketDir: bare.host.socketDir });
        const actions = await recover(second, provider2, host.repository, 30_000, {
          hostName: 'faulthost',
          owner: 'node-b',
          liveOwners: new Set(['node-a']),
        });
        await provider2.close();
        second.close();
        assert.deepEqual(actions, [], 'nothing done, nothing to report');
        const copied = await copying;
        assert.equal(copied.vms.length, 2);
        return { note: `second recovery: no action; first published ${copied.backupId}`, backupId: set.backupId, published: true };
      },
    );
  });

  it('a staging directory with no owner record, and a VM folder that is a symbolic link', async () => {
    const outside = mkdtempSync(path.join(os.tmpdir(), 'vmb-faults-outside-'));
    try {
      await domainCase(
        'staging directories: one no journal names and without owner record; one journalled, its VM folder since replaced by a link out of the repository',
        'neither removed: no proof its writer is gone / it leads out of the repository; both reported',
        async ({ host, journal, root }) => {
          const orphan = path.join(root, 'faulthost', 'alpha', '.partial-20260101T000000Z-orphan');
          await fs.mkdir(orphan, { recursive: true });
          const linkedId = '20260101T000000Z-linked';
          await fs.mkdir(path.join(outside, `.partial-${linkedId}`));
          await fs.mkdir(path.join(root, 'faulthost'), { recursive: true });
          await fs.symlink(outside, path.join(root, 'faulthost', 'gamma'));
          journal.append({
            backupId: linkedId,
            vm: 'gamma',
            op: 'staging',
            phase: 'intent',
            data: { dir: path.join(root, 'faulthost', 'gamma', `.partial-${linkedId}`) },
          });
          const actions = await recover(journal, host.provider, host.repository, 30_000, { hostName: 'faulthost', owner: 'node-a' });
          const kinds = actions.map((a) => `${a.kind}:${path.basename(a.path ?? '')}`).sort();
          assert.deepEqual(kinds, ['leave-staging:.partial-20260101T000000Z-orphan', 'refuse:.partial-20260101T000000Z-linked']);
          await fs.access(orphan);
          await fs.access(path.join(outside, `.partial-${linkedId}`));
          await fs.rm(orphan, { recursive: true });
          await fs.rm(path.join(root, 'faulthost', 'gamma'));
          return { note: `recovery: ${kinds.join(', ')}; both intact`, published: false };
        },
      );
    } finally {
      await fs.rm(outside, { recursive: true, force: true });
    }
  });
});
