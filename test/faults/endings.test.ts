// Every way a backup set ends other than by finishing, on a real `node-red` process (v4) and real
// QEMU: a redeploy that changes a host setting (the repository, the socket directory, the freeze
// timeout) while guests are frozen, while the views are in place and while the disks are copied;
// idleTimeout; sessionTimeout during the copy; the host node removed during the copy; Node-RED
// stopped during the copy and started again. Each case checks, from outside the product: QEMU's
// block graph (no vmb-* node, no device on one), its jobs (none), its bitmaps (one of ours per disk
// at most), the process table (no qemu-nbd copy, no guardian left), the repository (no .partial-),
// the journal (nothing pending), and that the ending reached the flow's Catch node with
// msg.summary (failedAt, backups, vmState). A redeploy must finish well within Node-RED's 15 s.
import * as assert from 'node:assert/strict';
import { promises as fs, mkdtempSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pendingUndos } from '../../src/ledger/pending';
import { startBareWorld, type BareWorld } from './support/bare';
import { hookLog, waitAgent } from './support/guest';
import { ensureLab, labImages, labRefs, labRun } from './support/lab';
import { procFlow, readyForCase, RealNodeRed, type ProcFlowOptions } from './support/nodered';
import { faultCase } from './support/table';
import {
  assertNoFleeceFiles,
  assertNoJobs,
  assertVmsUnharmed,
  checkGuestFrozen,
  copyServers,
  fmtMs,
  guardiansOf,
  readJournal,
  sleep,
  waitForPath,
  type VmRef,
} from './support/world';

const GROUP = 'endings';

interface Caught {
  topic?: string;
  source?: string;
  error?: string;
  payload?: any;
  summary?: { ok: boolean; failedAt?: string; error?: string; backups?: { published: boolean; text: string }; vmState?: any };
}

describe('fault injection: every ending of a set (real Node-RED, real QEMU)', function () {
  this.timeout(300_000);
  let nr: RealNodeRed;
  let bare: BareWorld;
  /** two repositories and two socket directories: a redeploy moves the host node from the first to the second */
  let repos: [string, string];
  let otherSocketDir: string;
  /** each case's journal directory, removed at the end */
  const journalDirs: string[] = [];

  before(async function () {
    this.timeout(600_000);
    // disks big enough that a copy takes seconds (two VMs, 2 x 768 MiB of data: about 3 s here), so
    // that an ending sent half a second into it finds it running: with 2 x 160 MiB the in-process
    // copy took 0.6 s and a redeploy "during the copy" often came after the set had published
    bare = await startBareWorld(['alpha', 'beta'], { dataMiB: 768, sizeMiB: 800 });
    repos = [mkdtempSync(path.join(os.tmpdir(), 'vmb-endings-repo-a-')), mkdtempSync(path.join(os.tmpdir(), 'vmb-endings-repo-b-'))];
    otherSocketDir = mkdtempSync(path.join(os.tmpdir(), 'vmb-endings-run-'));
    nr = RealNodeRed.create();
    await nr.start();
  });
  after(async () => {
    await nr?.stop();
    await bare?.host.stop();
    for (const d of [...(repos ?? []), otherSocketDir, ...journalDirs]) if (d) await fs.rm(d, { recursive: true, force: true });
    if (nr) await fs.rm(nr.userDir, { recursive: true, force: true });
  });

  type Flow = Omit<ProcFlowOptions, 'journalDir' | 'hostName'>;
  interface Ctx {
    journalDir: string;
    journalFile: string;
    flow(o: Partial<Flow>): ReturnType<typeof procFlow>;
    runTo(stage: string): Promise<any>;
    /** the first message Catch got whose topic matches */
    caught(topic: RegExp, withinMs?: number): Promise<Caught>;
  }

  /** wait until the copy of the set has begun (its first staging directory exists) */
  async function copyStarted(set: { backupId: string }, repository: string, withinMs = 20_000): Promise<void> {
    const staging = path.join(repository, 'bare', 'alpha', `.partial-${set.backupId}`);
    if (await waitForPath(staging, withinMs)) return;
    throw new Error(`the copy did not begin (${staging}); Catch got: ${JSON.stringify(await nr.global('caught')).slice(0, 400)}`);
  }

  /**
   * Everything the set did is gone, asked of QEMU and the process table, within `withinMs` (a
   * guardian may still be finishing): no vmb-* node, no job, one bitmap of ours per disk at most,
   * no qemu-nbd copy, no guardian, no fleecing image, no staging directory, nothing pending.
   */
  async function assertNothingLeft(ctx: Ctx, refs: readonly VmRef[], imageDir: string, withinMs = 45_000): Promise<string> {
    const t0 = Date.now();
    let last: unknown;
    for (;;) {
      try {
        assert.deepEqual(await guardiansOf(ctx.journalFile), [], 'a guardian process still runs');
        assert.deepEqual(await copyServers(repos), [], 'a qemu-nbd copy of ours still runs');
        assert.deepEqual(pendingUndos(readJournal(ctx.journalFile)), [], 'the journal still lists undos');
        await assertNoJobs(refs);
        const vms = await assertVmsUnharmed(refs);
        await assertNoFleeceFiles([imageDir]);
        for (const repo of repos) {
          const partial = (await filesAndDirs(repo)).filter((p) => p.includes('.partial-'));
          assert.deepEqual(partial, [], `staging directories left in ${repo}`);
        }
        return `nothing left after ${fmtMs(Date.now() - t0)}: ${vms}; no job, no qemu-nbd, no guardian, no .partial-, journal nothing pending`;
      } catch (err) {
        last = err;
        if (Date.now() - t0 > withinMs) {
          (last as Error).message += `\nnode-red log tail:\n${nr.log.slice(-2500)}`;
          throw last;
        }
        await sleep(500);
      }
    }
  }

  async function filesAndDirs(root: string): Promise<string[]> {
    const out: string[] = [];
    const walk = async (d: string) => {
      for (const e of await fs.readdir(d, { withFileTypes: true }).catch(() => [])) {
        out.push(path.join(d, e.name));
        if (e.isDirectory()) await walk(path.join(d, e.name));
      }
    };
    await walk(root);
    return out;
  }

  /** The ending reached Catch with a summary that says where it failed, what was published and the VMs' state. */
  function assertEndingSummary(c: Caught, failedAt: string): string {
    assert.ok(c.summary, `msg.summary on the Catch message (${c.topic}: ${c.error})`);
    assert.equal(c.summary.ok, false);
    assert.equal(c.summary.failedAt, failedAt, `failedAt (${c.error})`);
    assert.equal(c.summary.backups?.published, false, 'nothing published');
    assert.ok(c.summary.vmState && typeof c.summary.vmState.text === 'string', 'vmState');
    return `Catch: ${c.topic} failedAt=${c.summary.failedAt}, backups: ${c.summary.backups?.text}; VMs: ${c.summary.vmState.text}`;
  }

  /** how long a clean copy stage takes here (measured by the first case), to time the session case */
  let copyMs = 0;

  async function endingCase(
    name: string,
    expected: string,
    lab: boolean,
    body: (ctx: Ctx) => Promise<string>,
    /** the flow before the ending: it stops after `lastStage` (default: the whole flow) */
    first: Partial<Flow> = {},
  ): Promise<void> {
    await faultCase(GROUP, name, expected, async () => {
      if (lab) await ensureLab();
      await readyForCase(nr, lab ? labRefs : []);
      const journalDir = mkdtempSync(path.join(os.tmpdir(), 'vmb-endings-journal-'));
      journalDirs.push(journalDir);
      const hostName = 'bare';
      // every copy a full: an incremental of these idle VMs copies next to nothing, and is over at once
      const base: Flow = { socketDir: lab ? labRun : bare.host.socketDir, repository: repos[0], lastStage: 'copy', copyMode: 'full' };
      const ctx: Ctx = {
        journalDir,
        journalFile: path.join(journalDir, `journal-${hostName}.jsonl`),
        flow: (o) => procFlow({ ...base, ...o, journalDir, hostName }),
        runTo: (stage) => nr.runTo(stage),
        async caught(topic, withinMs = 40_000) {
          const deadline = Date.now() + withinMs;
          for (;;) {
            const all = (await nr.nr?.globalValue<Caught[]>('caught').catch(() => undefined)) ?? [];
            const hit = all.find((c) => topic.test(c.topic ?? ''));
            if (hit) return hit;
            if (Date.now() > deadline)
              throw new Error(`no Catch message on ${topic} within ${withinMs} ms; got: ${JSON.stringify(all).slice(0, 600)}`);
            await sleep(250);
          }
        },
      };
      await nr.deploy(ctx.flow(first));
      const note = await body(ctx);
      const notes = [note];
      if (lab) {
        const spans: string[] = [];
        for (const vm of labRefs) {
          await waitAgent(vm.qga!);
          const longest = checkGuestFrozen(vm.id, await hookLog(vm.qga!), 10_000 + 1000);
          spans.push(`${vm.id} ${fmtMs(longest)}`);
        }
        notes.push(`frozen max (guest clock): ${spans.join(', ')}`);
      }
      notes.push(await assertNothingLeft(ctx, lab ? labRefs : bare.refs, lab ? labImages : bare.host.imageDir));
      assert.doesNotMatch(nr.log, /Close timed out/, 'Node-RED logged "Close timed out"');
      return notes.join('; ');
    });
  }

  /** Redeploy with one host setting changed; the deploy itself must be well within Node-RED's close timeout. */
  async function redeploy(ctx: Ctx, change: Partial<Flow>, type: 'full' | 'nodes'): Promise<string> {
    const t0 = Date.now();
    await nr.deploy(ctx.flow(change), type);
    const ms = Date.now() - t0;
    assert.ok(ms < 12_000, `the redeploy took ${ms} ms (Node-RED gives a node 15 s to close)`);
    return `${type} deploy in ${fmtMs(ms)}`;
  }

  it('a clean run (the baseline the endings are held against)', async () => {
    await endingCase(
      'clean run of the whole flow on the bare VMs',
      'published; one bitmap of ours per disk; nothing else left',
      false,
      async (ctx) => {
        const set = await ctx.runTo('post-snapshot');
        const t0 = Date.now();
        await copyStarted(set, repos[0]).catch(() => undefined);
        await nr.waitGlobal('copy', 120_000);
        copyMs = Date.now() - t0;
        return `copy stage ${fmtMs(copyMs)}`;
      },
    );
  });

  it('a socket in the socket directory whose name is not a valid VM id', async () => {
    await endingCase(
      'a QMP socket named "not a vm.qmp" beside the VMs; the whole flow runs',
      'the VMs are published; msg.summary on the copy output lists the socket as NOT backed up and is not ok',
      false,
      async (ctx) => {
        const odd = path.join(bare.host.socketDir, 'not a vm.qmp');
        await fs.writeFile(odd, '');
        try {
          await ctx.runTo('copy');
          const summary = await nr.waitGlobal<any>('copy_summary', 10_000);
          assert.equal(summary.ok, false, 'not ok while something on the host was not backed up');
          assert.ok(
            summary.skipped.some((x: { vm: string }) => x.vm === 'not a vm.qmp'),
            JSON.stringify(summary.skipped),
          );
          assert.match(summary.text, /NOT backed up \(not a valid VM name\): socket not a vm\.qmp skipped/);
          assert.equal(summary.backups.published, true);
          return `published ${summary.backups.count} VM(s); summary not ok: "${summary.text.split('\n').find((l: string) => /not a valid VM name/.test(l))}"`;
        } finally {
          await fs.rm(odd, { force: true });
        }
      },
    );
  });

  const changes: { what: string; change: () => Partial<Flow> }[] = [
    { what: 'repository', change: () => ({ repository: repos[1] }) },
    { what: 'socket directory', change: () => ({ socketDir: otherSocketDir }) },
    { what: 'freeze timeout', change: () => ({ freezeTimeout: 7 }) },
  ];

  for (const { what, change } of changes) {
    it(`redeploy changing the ${what} while guests are frozen`, async () => {
      await endingCase(
        `redeploy changing the ${what}, guests frozen (after prepare)`,
        'the closing host node thaws both guests at once (within freezeTimeout); Catch gets the ending, failedAt snapshot; nothing left',
        true,
        async (ctx) => {
          await ctx.runTo('prepare');
          const deployed = await redeploy(ctx, { ...change(), socketDir: what === 'socket directory' ? otherSocketDir : labRun }, 'full');
          const c = await ctx.caught(/\/ended$/);
          return `${deployed}; ${assertEndingSummary(c, 'snapshot')}`;
        },
        { lastStage: 'prepare' },
      );
    });

    it(`redeploy changing the ${what} while the views are in place`, async () => {
      await endingCase(
        `redeploy ("modified nodes") changing the ${what}, views in place (after snapshot)`,
        'views released; Catch gets the ending, failedAt post-snapshot; nothing left',
        false,
        async (ctx) => {
          await ctx.runTo('snapshot');
          const deployed = await redeploy(ctx, change(), 'nodes');
          const c = await ctx.caught(/\/ended$/);
          return `${deployed}; ${assertEndingSummary(c, 'post-snapshot')}`;
        },
        { lastStage: 'snapshot' },
      );
    });

    it(`redeploy changing the ${what} during the copy`, async () => {
      await endingCase(
        `redeploy ("modified nodes") changing the ${what} during the copy`,
        'the copy stops, views released, staging removed in the old repository, QMP answers at once; Catch gets the ending, failedAt copy; nothing left',
        false,
        async (ctx) => {
          const set = await ctx.runTo('post-snapshot');
          await copyStarted(set, repos[0]);
          await sleep(500);
          const deployed = await redeploy(ctx, change(), 'nodes');
          assert.equal(await nr.global('copy'), undefined, 'the copy finished before the redeploy (the case proves nothing if it did)');
          const c = await ctx.caught(/\/ended$/);
          return `${deployed}; ${assertEndingSummary(c, 'copy')}`;
        },
      );
    });
  }

  it('idleTimeout: the next node never gets the set', async () => {
    await endingCase(
      'idleTimeout (5 s): the copy node is missing after post-snapshot',
      'the idle watchdog ends the set: views released; Catch gets it (topic .../ended), failedAt copy; nothing left',
      false,
      async (ctx) => {
        await nr.deploy(ctx.flow({ without: 'copy', lastStage: 'post-snapshot', idleTimeout: 5 }));
        await ctx.runTo('post-snapshot');
        const c = await ctx.caught(/\/ended$/, 30_000);
        assert.match(c.error ?? '', /idleTimeout/);
        return assertEndingSummary(c, 'copy');
      },
    );
  });

  it('sessionTimeout during the copy', async () => {
    await endingCase(
      'sessionTimeout (1 min) passes during the copy',
      'the session watchdog ends the set: the copy stops at once (no job left), views released, staging removed; Catch gets it, failedAt copy; nothing left',
      false,
      async (ctx) => {
        // the set reaches the copy a little before its session ends: a function node holds it until then
        const lead = Math.max(300, Math.round((copyMs || 2000) / 3));
        const hold = `const end = Date.parse(msg.payload.createdAt) + 60000; setTimeout(() => node.send(msg), Math.max(0, end - ${lead} - Date.now())); return null;`;
        // sessionTimeout is in minutes (at least 1)
        await nr.deploy(ctx.flow({ sessionTimeout: 1, between: { after: 'post-snapshot', func: hold } }));
        const set = await ctx.runTo('post-snapshot');
        await copyStarted(set, repos[0], 90_000);
        const c = await ctx.caught(/\/ended$/, 30_000);
        assert.match(c.error ?? '', /sessionTimeout/);
        assert.equal(await nr.global('copy'), undefined, 'the copy did not finish (the case proves nothing if it did)');
        return assertEndingSummary(c, 'copy');
      },
    );
  });

  it('the host node removed during the copy', async () => {
    await endingCase(
      'a deploy removes the host node during the copy (the stage nodes stay)',
      'the closing host node ends the set; a backup node that still names it raises the ending to Catch, failedAt copy; nothing left',
      false,
      async (ctx) => {
        const set = await ctx.runTo('post-snapshot');
        await copyStarted(set, repos[0]);
        const deployed = await redeploy(ctx, { withoutHost: true }, 'full');
        const c = await ctx.caught(/\/ended$/);
        return `${deployed}; ${assertEndingSummary(c, 'copy')}`;
      },
    );
  });

  it('Node-RED stopped during the copy, started again', async () => {
    await endingCase(
      'Node-RED stopped (SIGINT) during the copy, then started again',
      'the host node ends the set as Node-RED stops; once Node-RED is back, recovery reports it to Catch (topic .../recovery) with failedAt copy; nothing left',
      false,
      async (ctx) => {
        const set = await ctx.runTo('post-snapshot');
        await copyStarted(set, repos[0]);
        const t0 = Date.now();
        await nr.stop();
        const stopMs = Date.now() - t0;
        await nr.start();
        const c = await ctx.caught(/\/recovery$/);
        return `stopped in ${fmtMs(stopMs)}; ${assertEndingSummary(c, 'copy')}`;
      },
    );
  });

  it('Node-RED killed (SIGKILL) during the copy, started again', async () => {
    await endingCase(
      'Node-RED SIGKILLed during the copy, then started again',
      'the guardian undoes the set; once Node-RED is back, recovery reports it to Catch (topic .../recovery) with failedAt copy; nothing left',
      false,
      async (ctx) => {
        const set = await ctx.runTo('post-snapshot');
        await copyStarted(set, repos[0]);
        await nr.kill();
        await nr.start();
        const c = await ctx.caught(/\/recovery$/);
        return assertEndingSummary(c, 'copy');
      },
    );
  });
});
