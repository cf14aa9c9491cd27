// Fault injection on real QEMU processes without a guest OS, through the real pipeline nodes in
// Node-RED (test helper): VMs killed or gone between stages, messages lost, malformed or edited
// between stages, stages replayed or out of order, the flow redeployed mid-backup.
// After every case: every VM running, QEMU showing nothing of ours in its graph (no vmb-* node, every
// device on its own image, at most one vmbackup-* bitmap per disk), no fleecing image left, nothing
// pending in the journal, nothing partial published, earlier backups byte-identical (see support/world.ts).
import * as assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pendingUndos } from '../../src/ledger/pending';
import { QmpClient } from '../../src/providers/qemu/protocol';
import { waitForSocket } from '../support/bare-vms';
import { helper } from '../nodes/flow-fixture';
import { startBareWorld, type BareWorld } from './support/bare';
import { InProcessRun, type Stage, type StepResult } from './support/inproc';
import { faultCase } from './support/table';
import { assertNoFleeceFiles, assertRepository, assertVmsUnharmed, readJournal, repositoryState, sleep } from './support/world';

const GROUP = 'bare VMs';

function short(text: string, n = 110): string {
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
}

describe('fault injection: bare QEMU VMs through the pipeline nodes', function () {
  this.timeout(180_000);
  let world: BareWorld;

  before(async () => {
    world = await startBareWorld(['alpha', 'beta'], { dataMiB: 4 });
  });
  after(async () => {
    await world?.host.stop();
  });

  /**
   * One case: a fresh journal and flow, `body` drives the stages and injects the fault; then the
   * watchdogs get time to act, the flow is closed, killed VMs are started again, and the
   * invariants are checked from outside.
   */
  async function bareCase(
    name: string,
    expected: string,
    body: (run: InProcessRun) => Promise<Outcome>,
    o: { fallback?: string; unreachable?: string; hostExtra?: Record<string, unknown> } = {},
  ) {
    await faultCase(GROUP, name, expected, async () => {
      const repository = world.host.repository;
      const before = await repositoryState(repository);
      const run = new InProcessRun({
        socketDir: world.host.socketDir,
        repository,
        journalDir: mkdtempSync(path.join(os.tmpdir(), 'vmb-faults-journal-')),
        fallback: o.fallback ?? 'checkpoint',
        ...(o.unreachable ? { unreachable: o.unreachable } : {}),
        hostExtra: { idleTimeout: 5, pauseTimeout: 5, ...o.hostExtra },
      });
      let out: Outcome;
      let done = false;
      try {
        await run.load();
        out = await body(run);
        await run.settled(30_000);
        done = true;
      } finally {
        await run.stop();
        // a case that failed part-way may leave a VM it killed down: the next case needs it
        if (!done) await world.restore().catch(() => undefined);
      }
      await assertNoFleeceFiles([world.host.imageDir]);
      const restarted = await world.restore();
      const notes = [out.note];
      if (restarted.length) notes.push(`${await world.checkImages()}, restarted ${restarted.join(', ')}`);
      notes.push(await assertVmsUnharmed(world.refs));
      notes.push(await assertRepository(repository, before, out.backupId, out.published));
      const pending = pendingUndos(readJournal(run.journalFile));
      assert.deepEqual(pending, [], 'the journal still lists undos');
      notes.push('journal: nothing pending');
      return notes.join('; ');
    });
  }

  // ---- a baseline, so that "earlier backups intact" has something to check ----

  it('baseline: a full backup without faults', async () => {
    await bareCase('no fault (baseline)', 'published, crash-consistent (no agent)', async (run) => {
      const r = await run.through('copy');
      assert.ok(r.last.ok, (r.last as any).error);
      return { note: `published ${r.last.payload.vms.length} VMs`, backupId: r.last.payload.backupId, published: true };
    });
  });

  // ---- VM gone / QEMU killed ----

  it('QEMU killed before enumerate (stale socket), policy unreachable fail', async () => {
    await bareCase(
      'enumerate: QEMU killed before (stale QMP socket), unreachable: fail',
      'VM listed as unreachable with the reason; classify refuses the set naming it; summary not ok',
      async (run) => {
        await world.kill('beta');
        const r = await run.through('copy');
        const enumerated = r.results.enumerate as { ok: true; payload: any };
        assert.ok(enumerated.ok);
        const beta = enumerated.payload.vms.find((v: any) => v.id === 'beta');
        assert.equal(beta?.state, 'unreachable', 'beta is enumerated, not dropped');
        assert.match(beta.unreachable.reason, /QMP socket .*beta\.qmp does not answer/);
        assert.equal(r.stage, 'classify');
        assert.match(
          (r.last as any).error,
          /1 VM\(s\) defined on host faulthost cannot be reached: beta \(QMP socket .* policy unreachable is "fail"/,
        );
        const summary = r.last.msg.summary;
        assert.equal(summary.ok, false);
        assert.equal(summary.failedAt, 'classify');
        assert.equal(summary.backups.published, false);
        return { note: `${refusal(r.last, 'classify')}; summary ok=false`, backupId: enumerated.payload.backupId, published: false };
      },
    );
  });

  it('QEMU killed before enumerate (stale socket), policy unreachable report', async () => {
    await bareCase(
      'enumerate: QEMU killed before (stale QMP socket), unreachable: report',
      'the other VM published; the unreachable one in skipped and in the summary, which is not ok',
      async (run) => {
        await world.kill('beta');
        const r = await run.through('copy');
        assert.ok(r.last.ok, (r.last as any).error);
        const set = r.last.payload;
        assert.deepEqual(
          set.vms.map((v: any) => v.id),
          ['alpha'],
        );
        assert.deepEqual(
          set.skipped.map((x: any) => x.vm),
          ['beta'],
        );
        const summary = r.last.msg.summary;
        assert.equal(summary.ok, false, 'a defined VM was not backed up: not ok');
        assert.equal(summary.backups.published, true);
        assert.match(summary.text, /NOT backed up \(defined but unreachable\): beta \(QMP socket/);
        return {
          note: `alpha published; summary ok=false: "${short(
            summary.text.split('\n').find((l: string) => /NOT backed up/.test(l)),
            70,
          )}"`,
          backupId: set.backupId,
          published: true,
        };
      },
      { unreachable: 'report' },
    );
  });

  it('every QMP socket held by another client (as libvirtd holds them)', async () => {
    await bareCase(
      'enumerate: every QMP socket held by another client (libvirt), unreachable: report',
      'every VM listed unreachable with the reason; classify refuses (0 VMs where VMs are defined); summary not ok, the warnings kept',
      async (run) => {
        // the first client of a QMP socket is served; a second is queued and never greeted
        const holders = await Promise.all(world.refs.map((ref) => QmpClient.connect(ref.qmp)));
        let r;
        try {
          r = await run.through('copy');
        } finally {
          await Promise.all(holders.map((h) => h.close()));
        }
        const enumerated = r.results.enumerate as { ok: true; payload: any };
        assert.ok(enumerated.ok, 'enumerate itself reports what it found');
        assert.deepEqual(
          enumerated.payload.vms.map((v: any) => [v.id, v.state]),
          [
            ['alpha', 'unreachable'],
            ['beta', 'unreachable'],
          ],
        );
        assert.equal(
          enumerated.payload.warnings.filter((w: string) => /defined but unreachable/.test(w)).length,
          2,
          'the warnings are not lost with an empty list',
        );
        assert.equal(r.stage, 'classify');
        assert.match((r.last as any).error, /none of the 2 VM\(s\) defined on host faulthost can be reached/);
        assert.equal(r.last.msg.summary.ok, false);
        return { note: refusal(r.last, 'classify'), backupId: enumerated.payload.backupId, published: false };
      },
      { unreachable: 'report' },
    );
  });

  it('a guest agent listing 300 file systems', async function () {
    if (process.getuid?.() !== 0) this.skip(); // bind mounts in a private mount namespace need root
    await bareCase(
      'enumerate: a guest agent lists 300+ file systems (schema limit 256)',
      'that VM clamped with a warning and not application-consistent; the set passes its schema; both VMs published',
      async (run) => {
        const socket = path.join(world.host.socketDir, 'beta.qga');
        const scratch = mkdtempSync(path.join(os.tmpdir(), 'vmb-faults-fs-'));
        const agent = spawn(
          'unshare',
          [
            '-m',
            '--propagation',
            'private',
            process.execPath,
            path.join(__dirname, 'support', 'many-filesystems-agent.js'),
            socket,
            '300',
            scratch,
          ],
          { stdio: 'ignore' },
        );
        try {
          await waitForSocket(socket, 30_000);
          const r = await run.through('copy');
          assert.ok(r.last.ok, (r.last as any).error);
          const beta = r.last.payload.vms.find((v: any) => v.id === 'beta');
          assert.ok(beta.guest.filesystemsListed >= 300, `listed ${beta.guest.filesystemsListed}`);
          assert.equal(beta.guest.filesystems.length, 256);
          assert.match(beta.warnings.join('\n'), /the guest lists \d+ file systems; only the first 256 are kept/);
          assert.equal(beta.method, 'checkpoint');
          assert.match(
            beta.reasons.find((x: any) => x.rule === 'freezable-filesystems').detail,
            /lists \d+ file systems, more than the 256/,
          );
          assert.deepEqual(
            r.last.payload.vms.map((v: any) => v.copy.path.split('/')[1]),
            ['alpha', 'beta'],
          );
          return {
            note: `beta: ${beta.guest.filesystemsListed} listed, 256 kept, checkpoint; both published`,
            backupId: r.last.payload.backupId,
            published: true,
          };
        } finally {
          const gone = new Promise<void>((resolve) => (agent.exitCode !== null ? resolve() : agent.once('exit', () => resolve())));
          agent.kill('SIGTERM');
          await gone;
          rmSync(socket, { force: true });
          rmSync(scratch, { recursive: true, force: true });
        }
      },
    );
  });

  for (const [after, stage] of [
    ['enumerate', 'classify'],
    ['classify', 'prepare'],
    ['prepare', 'snapshot'],
  ] as const) {
    it(`VM gone between ${after} and ${stage}`, async () => {
      await bareCase(
        `${stage}: VM gone after ${after}`,
        "refused; no VM backed up (all or nothing), the other VM's view released",
        async (run) => {
          const r = await run.through(after);
          assert.ok(r.last.ok);
          await world.kill('beta');
          const rest = await run.through('copy', r.last.payload, stage);
          assert.equal(rest.last.ok, false);
          assert.match((rest.last as any).error, /beta/);
          return { note: refusal(rest.last, rest.stage), backupId: r.last.payload.backupId, published: false };
        },
      );
    });
  }

  it('QEMU killed after prepare (saved-state: VMs paused)', async () => {
    await bareCase(
      'snapshot: QEMU killed while saved/paused',
      'refused; the surviving VM resumed; the dead VM needs no resume; nothing published',
      async (run) => {
        const r = await run.through('prepare');
        assert.ok(r.last.ok, (r.last as any).error);
        await world.kill('beta');
        const s = await run.step('snapshot', r.last.payload);
        return { note: refusal(s, 'snapshot'), backupId: r.last.payload.backupId, published: false };
      },
      { fallback: 'saved-state' },
    );
  });

  it('QEMU killed after snapshot (VM on its point-in-time view)', async () => {
    await bareCase(
      'post-snapshot: QEMU killed while its view is in place',
      'refused; the view went with QEMU (the disk never left its image: nothing to merge); its fleecing image removed; the VM restarts on its own image; nothing published',
      async (run) => {
        const r = await run.through('snapshot');
        assert.ok(r.last.ok);
        await world.kill('beta');
        const s = await run.step('post-snapshot', r.last.payload);
        return { note: refusal(s, 'post-snapshot'), backupId: r.last.payload.backupId, published: false };
      },
    );
  });

  it('QEMU killed after post-snapshot', async () => {
    await bareCase(
      'copy: QEMU killed before the copy',
      'refused; fleecing image removed; the VM restarts on its own image; nothing published',
      async (run) => {
        const r = await run.through('post-snapshot');
        assert.ok(r.last.ok);
        await world.kill('alpha');
        const s = await run.step('copy', r.last.payload);
        return { note: refusal(s, 'copy'), backupId: r.last.payload.backupId, published: false };
      },
    );
  });

  it('QEMU killed during the copy', async () => {
    await bareCase(
      'copy: QEMU killed while copying',
      'either published complete and verified (the copy had read the whole view) or refused; fleecing image removed either way',
      async (run) => {
        const r = await run.through('post-snapshot');
        assert.ok(r.last.ok);
        const pending = run.step('copy', r.last.payload);
        // kill as soon as the copy has started (its staging directory exists)
        const staging = path.join(world.host.repository, 'faulthost', 'beta', `.partial-${r.last.payload.backupId}`);
        for (let i = 0; i < 400; i++) {
          if (
            await import('node:fs/promises')
              .then((f) => f.stat(staging))
              .then(
                () => true,
                () => false,
              )
          )
            break;
          await sleep(5);
        }
        await world.kill('beta');
        const s = await pending;
        return {
          note: s.ok ? 'published (copy had what it needed)' : refusal(s, 'copy'),
          backupId: r.last.payload.backupId,
          published: s.ok,
        };
      },
    );
  });

  it('QMP socket held by another client while the view is released', async () => {
    await bareCase(
      'release: the QMP socket held by another client (idleTimeout aborts the set)',
      'the release fails while the socket is held and is retried until it succeeds; both reported in the log; QEMU then shows nothing of ours; nothing published',
      async (run) => {
        const r = await run.through('post-snapshot');
        assert.ok(r.last.ok, (r.last as any).error);
        const backupId: string = r.last.payload.backupId;
        // the provider drops a connection idle for 3 s; after that QEMU serves whoever connects first
        // (one client at a time), and the product's next connection waits unserved
        await sleep(3500);
        const holder = await QmpClient.connect(path.join(world.host.socketDir, 'beta.qmp'));
        const logged = (re: RegExp) =>
          (helper.log().args as any[][]).map((a) => String(a[0]?.msg ?? '')).find((m) => m.includes(backupId) && re.test(m));
        let failed: string | undefined;
        try {
          for (let i = 0; i < 900 && !(failed = logged(/could not undo: .*beta release of the point-in-time view/)); i++) await sleep(100);
          assert.ok(failed, 'the failed release of beta is reported');
          // asked through the one connection QEMU serves: beta's view is still in place
          const held = await holder.execute<{ 'node-name': string }[]>('query-named-block-nodes', { flat: true });
          assert.ok(
            held.some((n) => n['node-name'].startsWith('vmb-')),
            'beta still holds its view while the socket is held',
          );
        } finally {
          await holder.close();
        }
        let retried: string | undefined;
        for (let i = 0; i < 600 && !(retried = logged(/succeeded on a retry|retried and done by its guardian/)); i++) await sleep(100);
        assert.ok(retried, 'the retry that succeeded is reported');
        return {
          note: `reported: "${short(failed!.replace(/^.*could not undo: /, ''), 90)}"; then "${short(retried, 60)}"`,
          backupId,
          published: false,
        };
      },
    );
  });

  // ---- messages lost (mis-wired flow, deleted node) ----

  it('message lost after snapshot', async () => {
    await bareCase(
      'post-snapshot never reached (message lost after snapshot)',
      'idleTimeout (5 s) aborts the set: views released; a late message is refused',
      async (run) => {
        const r = await run.through('snapshot');
        assert.ok(r.last.ok);
        await run.settled(20_000);
        const late = await run.step('post-snapshot', r.last.payload);
        assert.match((late as any).error, /aborted|not live/);
        return {
          note: `aborted by the idle watchdog; late message: ${refusal(late, 'post-snapshot')}`,
          backupId: r.last.payload.backupId,
          published: false,
        };
      },
    );
  });

  it('message lost after prepare (saved-state)', async () => {
    await bareCase(
      'snapshot never reached (message lost while VMs paused)',
      'pauseTimeout (5 s) resumes the VMs; idleTimeout aborts the set; staging removed',
      async (run) => {
        const r = await run.through('prepare');
        assert.ok(r.last.ok);
        const t0 = Date.now();
        await run.settled(20_000);
        return {
          note: `VMs resumed and set aborted after ${((Date.now() - t0) / 1000).toFixed(1)} s`,
          backupId: r.last.payload.backupId,
          published: false,
        };
      },
      { fallback: 'saved-state' },
    );
  });

  it('message lost after post-snapshot', async () => {
    await bareCase(
      'copy never reached (message lost after post-snapshot)',
      'idleTimeout aborts: views released, nothing published',
      async (run) => {
        const r = await run.through('post-snapshot');
        assert.ok(r.last.ok);
        await run.settled(20_000);
        return { note: 'aborted by the idle watchdog', backupId: r.last.payload.backupId, published: false };
      },
    );
  });

  // ---- malformed or edited messages ----

  // prepare.view and snapshot.view are one object in the host's output, and structuredClone (as
  // Node-RED's message clone) keeps them one: an edit of either is refused at the first pointer
  const edits: [Stage, Stage, string, (set: any) => void, RegExp][] = [
    [
      'snapshot',
      'prepare',
      'a disk file path edited to /etc/passwd',
      (s) => (s.vms[0].disks[0].file = '/etc/passwd'),
      /\/vms\/0\/disks\/0\/file: differs/,
    ],
    [
      'snapshot',
      'prepare',
      'the fleecing image location edited',
      (s) => (s.vms[0].snapshotLocation.path = '/'),
      /\/vms\/0\/snapshotLocation\/path: differs/,
    ],
    [
      'copy',
      'post-snapshot',
      'a fleecing image path edited to /etc/shadow',
      (s) => (s.vms[0].snapshot.view.ref.disks[0].fleece = '/etc/shadow'),
      /\/vms\/0\/(prepare|snapshot)\/view\/ref\/disks\/0\/fleece: differs/,
    ],
    [
      'copy',
      'post-snapshot',
      "a view's disk node edited",
      (s) => (s.vms[0].snapshot.view.ref.disks[0].node = 'vmb-other-0-c'),
      /\/vms\/0\/(prepare|snapshot)\/view\/ref\/disks\/0\/node: differs/,
    ],
    [
      'copy',
      'post-snapshot',
      'a crash-consistent VM relabelled application-consistent',
      (s) => (s.vms[1].consistency = 'application'),
      /\/vms\/1\/consistency: differs/,
    ],
    ['prepare', 'classify', 'the method edited to saved-state', (s) => (s.vms[0].method = 'saved-state'), /\/vms\/0\/method: differs/],
    [
      'copy',
      'post-snapshot',
      'the host name edited to victimhost',
      (s) => (s.host.name = 'victimhost'),
      /\/host\/name: differs from what host produced/,
    ],
    ['copy', 'post-snapshot', 'a repository added', (s) => (s.repository = '/tmp'), /\/repository: differs from what host produced/],
    [
      'prepare',
      'classify',
      'the fallback policy edited',
      (s) => (s.policy.fallback = 'saved-state'),
      /\/policy\/fallback: differs from what host produced/,
    ],
  ];
  for (const [stage, after, what, edit, pattern] of edits) {
    it(`${stage} refuses ${what}`, async () => {
      await bareCase(
        `${stage}: message edited between stages (${what})`,
        'refused naming the field, before any side effect; the genuine message then completes the backup',
        async (run) => {
          const r = await run.through(after);
          assert.ok(r.last.ok);
          const edited = structuredClone(r.last.payload);
          edit(edited);
          const s = await run.step(stage, edited);
          assert.match((s as any).error ?? '', pattern);
          assert.equal(s.msg.summary.failedAt, stage, 'the summary names the node that refused');
          const rest = await run.through('copy', r.last.payload, stage);
          assert.ok(rest.last.ok, (rest.last as any).error);
          assert.ok(!existsSync(path.join(world.host.repository, 'victimhost')), 'nothing published under an edited host name');
          return { note: `${refusal(s, stage)}; genuine message published`, backupId: r.last.payload.backupId, published: true };
        },
      );
    });
  }

  const malformed: [Stage, string, (set: any) => unknown, RegExp][] = [
    ['prepare', 'a non-object payload', () => 'please back up', /msg\.payload: \/ must be a backup-set object/],
    [
      'snapshot',
      'a VM id with "../"',
      (s) => ({ ...s, vms: [{ ...s.vms[0], id: '../../etc' }, s.vms[1]] }),
      /\/vms\/0\/id must match pattern/,
    ],
    ['snapshot', 'a duplicate VM id', (s) => ({ ...s, vms: [s.vms[0], s.vms[0]] }), /\/vms\/1\/id: duplicate VM id/],
    [
      'snapshot',
      'an unknown VM id',
      (s) => ({ ...s, vms: [{ ...s.vms[0], id: 'gamma' }, s.vms[1]] }),
      /\/vms\/0\/id: VM "gamma" is not part/,
    ],
    ['snapshot', 'a VM dropped after prepare', (s) => ({ ...s, vms: [s.vms[0]] }), /\/vms: VM\(s\) beta .* missing/],
    [
      'snapshot',
      'a classified set (stage out of order)',
      (s) => ({ ...s, stage: 'classified' }),
      /\/stage is "classified" but this node takes a backup set at stage "prepared"/,
    ],
    [
      'snapshot',
      'an absurd number',
      (s) => ({ ...s, vms: [{ ...s.vms[0], disks: [{ ...s.vms[0].disks[0], virtualSize: -5 }] }, s.vms[1]] }),
      /\/vms\/0\/disks\/0\/virtualSize must be >= 0/,
    ],
  ];
  for (const [stage, what, mutate, pattern] of malformed) {
    it(`${stage} refuses ${what}`, async () => {
      await bareCase(
        `${stage}: malformed message (${what})`,
        'refused naming the field; nothing done; the set is aborted by idleTimeout',
        async (run) => {
          const r = await run.through('prepare');
          assert.ok(r.last.ok);
          const s = await run.step(stage as any, mutate(structuredClone(r.last.payload)));
          assert.match((s as any).error ?? '', pattern);
          return { note: refusal(s, stage), backupId: r.last.payload.backupId, published: false };
        },
      );
    });
  }

  it('a stage replayed', async () => {
    await bareCase(
      'snapshot: the same message sent twice (replay)',
      'second run refused (stage already done); the first completes',
      async (run) => {
        const r = await run.through('prepare');
        assert.ok(r.last.ok);
        const first = await run.step('snapshot', r.last.payload);
        assert.ok(first.ok);
        const again = await run.step('snapshot', r.last.payload);
        assert.match((again as any).error, /\/stage: backup set .* is at stage "snapshotted"/);
        const rest = await run.through('copy', (first as any).payload, 'post-snapshot');
        assert.ok(rest.last.ok);
        return { note: `${refusal(again, 'snapshot')}; first published`, backupId: r.last.payload.backupId, published: true };
      },
    );
  });

  it('garbage into every node', async () => {
    await bareCase(
      'every node: garbage payloads (null, number, array, {})',
      'each refused naming "/" or the missing field; nothing done',
      async (run) => {
        let n = 0;
        for (const stage of ['classify', 'prepare', 'snapshot', 'post-snapshot', 'copy'] as const) {
          for (const payload of [null, 42, [1], {}, { stage: 'copied' }]) {
            const s = await run.step(stage, payload);
            assert.match((s as any).error ?? '', /^msg\.payload: \/\S*/);
            n++;
          }
        }
        return { note: `${n} refusals, each with a JSON pointer`, published: false };
      },
    );
  });

  // ---- redeploy mid-backup (the host node closes: what a full deploy or a stop does) ----

  it('redeploy while VMs are saved/paused', async () => {
    await bareCase(
      'redeploy after prepare (VMs paused, staging open)',
      'the closing host node resumes the VMs and removes the staging at once',
      async (run) => {
        const r = await run.through('prepare');
        assert.ok(r.last.ok);
        const t0 = Date.now();
        await run.unload();
        return { note: `closed in ${Date.now() - t0} ms`, backupId: r.last.payload.backupId, published: false };
      },
      { fallback: 'saved-state' },
    );
  });

  it('redeploy during the copy', async () => {
    await bareCase('redeploy while copying', 'the copy is cancelled and waited for, views released, nothing published', async (run) => {
      const r = await run.through('post-snapshot');
      assert.ok(r.last.ok);
      const backupId: string = r.last.payload.backupId;
      const pending = run.step('copy', r.last.payload).catch(() => undefined);
      const staging = path.join(world.host.repository, 'faulthost', 'alpha', `.partial-${backupId}`);
      for (let i = 0; i < 400; i++) {
        if (
          await import('node:fs/promises')
            .then((f) => f.stat(staging))
            .then(
              () => true,
              () => false,
            )
        )
          break;
        await sleep(5);
      }
      await run.unload();
      void pending;
      const published = await import('node:fs/promises')
        .then((f) => f.stat(path.join(world.host.repository, 'faulthost', 'alpha', backupId)))
        .then(
          () => true,
          () => false,
        );
      return { note: `host node closed mid-copy${published ? ' (the copy had already published)' : ''}`, backupId, published };
    });
  });
});
