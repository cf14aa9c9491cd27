// Repository and journal faults made with real file-system conditions: a size-limited tmpfs that
// fills up, a mount remounted read-only mid-backup; and the read-back verification, tested by
// corrupting a written copy through the provider interface (a wrapped provider, not a product
// switch). After every case: VMs running with nothing of ours in QEMU's graph, nothing pending in
// the journal, nothing partial published, earlier backups byte-identical.
import * as assert from 'node:assert/strict';
import { promises as fs, mkdirSync, mkdtempSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Journal } from '../../src/journal/journal';
import { pendingUndos } from '../../src/ledger/pending';
import { recover } from '../../src/recovery';
import { BackupHost, DEFAULT_TIMEOUTS } from '../../src/pipeline/backup-host';
import type { Timeouts } from '../../src/pipeline/live-backup';
import { QemuProvider } from '../../src/providers/qemu/qemu-provider';
import type { PointInTimeView } from '../../src/contract/types';
import type { ExportOptions, Progress } from '../../src/providers/provider';
import { runProgram } from '../../src/util/run';
import { startBareWorld, type BareWorld } from './support/bare';
import { InProcessRun } from './support/inproc';
import { helper } from '../nodes/flow-fixture';
import { faultCase } from './support/table';
import {
  assertNoFleeceFiles,
  assertRepository,
  assertVmsUnharmed,
  guardiansOf,
  qmp,
  readJournal,
  repositoryState,
  sleep,
} from './support/world';

const GROUP = 'repository';

async function mount(args: string[]): Promise<void> {
  await runProgram('mount', args);
}

async function fillUp(dir: string): Promise<void> {
  const handle = await fs.open(path.join(dir, 'filler'), 'w');
  const chunk = Buffer.alloc(1 << 20, 0x77);
  try {
    for (;;) await handle.write(chunk);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
  } finally {
    await handle.close();
  }
}

/** Flip 4 KiB of a qcow2 file's first data cluster (found with qemu-img map), as a bad write would. */
async function corruptData(file: string): Promise<void> {
  const { stdout } = await runProgram('qemu-img', ['map', '--output=json', '-f', 'qcow2', file]);
  const extent = (JSON.parse(stdout) as { data: boolean; offset?: number }[]).find((e) => e.data && e.offset !== undefined);
  assert.ok(extent, `no data cluster in ${file}`);
  const handle = await fs.open(file, 'r+');
  try {
    await handle.write(Buffer.alloc(4096, 0xee), 0, 4096, extent.offset! + 8192);
  } finally {
    await handle.close();
  }
}

describe('fault injection: repository and journal faults, read-back verification', function () {
  this.timeout(180_000);
  let world: BareWorld;
  let base: string;
  let repo: string;
  let journalFs: string;
  const mounted: string[] = [];

  before(async function () {
    base = mkdtempSync(path.join(os.tmpdir(), 'vmb-faults-repo-'));
    repo = path.join(base, 'repo');
    journalFs = path.join(base, 'journal');
    mkdirSync(repo);
    mkdirSync(journalFs);
    try {
      // two backups of 2 x 6 MiB fit; a third does not
      await mount(['-t', 'tmpfs', '-o', 'size=30m,mode=0755', 'tmpfs', repo]);
      mounted.push(repo);
      await mount(['-t', 'tmpfs', '-o', 'size=1m,mode=0700', 'tmpfs', journalFs]);
      mounted.push(journalFs);
    } catch (err) {
      if (process.env.VMBACKUP_FAULTS_NO_MOUNT === '1') return this.skip();
      throw new Error(
        `mounting a tmpfs failed (the repository faults need root and mount; VMBACKUP_FAULTS_NO_MOUNT=1 skips them): ${(err as Error).message}`,
      );
    }
    world = await startBareWorld(['alpha', 'beta'], { dataMiB: 6 });
  });
  after(async () => {
    await world?.host.stop();
    for (const m of mounted.reverse()) await runProgram('umount', [m]).catch(() => undefined);
    await fs.rm(base, { recursive: true, force: true });
  });

  interface Outcome {
    note: string;
    backupId?: string;
    published: boolean;
  }

  async function check(journalFile: string, before: Map<string, string>, out: Outcome, root = repo): Promise<string> {
    await assertNoFleeceFiles([world.host.imageDir]);
    const notes = [out.note, await assertVmsUnharmed(world.refs), await assertRepository(root, before, out.backupId, out.published)];
    assert.deepEqual(pendingUndos(readJournal(journalFile)), [], 'the journal still lists undos');
    notes.push('journal: nothing pending');
    return notes.join('; ');
  }

  /** Through the nodes (test helper), with the repository on the tmpfs. */
  async function nodeCase(
    name: string,
    expected: string,
    body: (run: InProcessRun) => Promise<Outcome>,
    o: { fallback?: string; journalDir?: string } = {},
  ) {
    await faultCase(GROUP, name, expected, async () => {
      const before = await repositoryState(repo);
      const run = new InProcessRun({
        socketDir: world.host.socketDir,
        repository: repo,
        journalDir: o.journalDir ?? mkdtempSync(path.join(os.tmpdir(), 'vmb-faults-journal-')),
        fallback: o.fallback ?? 'checkpoint',
        hostExtra: { idleTimeout: 5, pauseTimeout: 5 },
      });
      let out: Outcome;
      try {
        await run.load();
        out = await body(run);
        await run.settled(30_000);
      } finally {
        await run.stop();
        await mount(['-o', 'remount,rw', repo]).catch(() => undefined);
        await fs.rm(path.join(repo, 'filler'), { force: true });
      }
      return check(run.journalFile, before, out);
    });
  }

  it('baselines: two backups that fit', async () => {
    for (const n of [1, 2]) {
      await nodeCase(`no fault (baseline ${n} into the 30 MiB tmpfs)`, 'published', async (run) => {
        const r = await run.through('copy');
        assert.ok(r.last.ok, (r.last as any).error);
        return {
          note: `published, ${(r.last.payload.vms as any[]).reduce((n, vm) => n + vm.copy.bytes, 0)} bytes`,
          backupId: r.last.payload.backupId,
          published: true,
        };
      });
    }
  });

  it('repository full during the copy', async () => {
    await nodeCase(
      'copy: repository full (ENOSPC on a size-limited tmpfs)',
      'refused; staging removed; views released; earlier backups byte-identical',
      async (run) => {
        // this backup is an incremental of the baselines: the guest writes more than the space left
        // (about 16 MiB), so that its changed clusters cannot fit
        await qmp(world.refs[0].qmp, 'human-monitor-command', { 'command-line': 'qemu-io drive-virtio0 "write -P 0x66 8M 24M"' });
        const r = await run.through('copy');
        assert.equal(r.last.ok, false);
        assert.match((r.last as any).error, /ENOSPC|no space/i);
        return { note: `copy refused: "${(r.last as any).error.slice(0, 90)}"`, backupId: r.last.msg.payload.backupId, published: false };
      },
    );
  });

  it('repository full when the saved state is written', async () => {
    await nodeCase(
      'prepare: repository full while saving VM state',
      'refused; the VMs resumed at once; nothing published',
      async (run) => {
        await fillUp(repo);
        const r = await run.through('copy');
        assert.equal(r.stage, 'prepare');
        assert.equal(r.last.ok, false);
        return {
          note: `prepare refused: "${(r.last as any).error.slice(0, 90)}"`,
          backupId: r.last.msg.payload.backupId,
          published: false,
        };
      },
      { fallback: 'saved-state' },
    );
  });

  it('repository read-only from the copy on', async () => {
    await nodeCase(
      'copy: repository remounted read-only after post-snapshot',
      'refused (EROFS); views released; nothing published',
      async (run) => {
        const r = await run.through('post-snapshot');
        assert.ok(r.last.ok);
        await mount(['-o', 'remount,ro', repo]);
        const c = await run.step('copy', r.last.payload);
        assert.match((c as any).error ?? '', /EROFS|read-only/i);
        return { note: `copy refused: "${(c as any).error.slice(0, 90)}"`, backupId: r.last.payload.backupId, published: false };
      },
    );
  });

  it('repository read-only with staging directories in it, writable again later', async () => {
    await nodeCase(
      'copy: repository read-only while staging directories (saved states) exist, writable again 4 s later',
      'the discard fails and is retried every few seconds; once writable: staging removed, journal "end", guardian gone',
      async (run) => {
        const r = await run.through('post-snapshot');
        assert.ok(r.last.ok);
        const backupId: string = r.last.payload.backupId;
        const staging = ['alpha', 'beta'].map((vm) => path.join(repo, 'faulthost', vm, `.partial-${backupId}`));
        await mount(['-o', 'remount,ro', repo]);
        const c = await run.step('copy', r.last.payload);
        assert.match((c as any).error ?? '', /EROFS|read-only/i);
        await sleep(1000);
        const left = await Promise.all(
          staging.map((d) =>
            fs.access(d).then(
              () => true,
              () => false,
            ),
          ),
        );
        assert.deepEqual(left, [true, true], 'the staging directories cannot be removed while read-only');
        assert.equal(
          pendingUndos(readJournal(run.journalFile)).filter((u) => u.kind === 'discard').length,
          2,
          'their discards are pending',
        );
        assert.ok((await guardiansOf(path.dirname(run.journalFile))).length > 0, 'the guardian stays while they are');
        await sleep(3000);
        await mount(['-o', 'remount,rw', repo]);
        const t0 = Date.now();
        for (
          let i = 0;
          i < 100 &&
          ((await guardiansOf(path.dirname(run.journalFile))).length > 0 || readJournal(run.journalFile).every((e) => e.op !== 'end'));
          i++
        )
          await sleep(100);
        assert.deepEqual(
          await Promise.all(
            staging.map((d) =>
              fs.access(d).then(
                () => true,
                () => false,
              ),
            ),
          ),
          [false, false],
          'removed once writable',
        );
        assert.ok(
          readJournal(run.journalFile).some((e) => e.backupId === backupId && e.op === 'end'),
          'the set ended',
        );
        assert.deepEqual(await guardiansOf(path.dirname(run.journalFile)), [], 'its guardian is gone');
        return {
          note: `copy refused: "${(c as any).error.slice(0, 60)}"; staging kept while read-only, removed ${((Date.now() - t0) / 1000).toFixed(1)} s after remount rw; set ended; guardian gone`,
          backupId,
          published: false,
        };
      },
      { fallback: 'saved-state' },
    );
  });

  it('repository read-only before prepare (saved-state)', async () => {
    await nodeCase(
      'prepare: repository read-only before a saved-state prepare',
      'refused before any VM is paused',
      async (run) => {
        const r = await run.through('classify');
        assert.ok(r.last.ok);
        await mount(['-o', 'remount,ro', repo]);
        const p = await run.step('prepare', r.last.payload);
        assert.match((p as any).error ?? '', /EROFS|read-only/i);
        const journal = readJournal(run.journalFile);
        assert.ok(!journal.some((e) => e.op === 'save'), 'no VM was saved');
        return {
          note: `prepare refused: "${(p as any).error.slice(0, 90)}"; no save in the journal`,
          backupId: r.last.payload.backupId,
          published: false,
        };
      },
      { fallback: 'saved-state' },
    );
  });

  it('journal unwritable at start', async () => {
    const dir = path.join(journalFs, 'ro');
    mkdirSync(dir, { recursive: true });
    await mount(['-o', 'remount,ro', journalFs]);
    try {
      await nodeCase(
        'host start: journal on a read-only file system',
        'every stage refused naming journalDir; nothing touched',
        async (run) => {
          const r = await run.step('enumerate', '');
          assert.equal(r.ok, false);
          assert.match((r as any).error, /^journalDir: /);
          return { note: `enumerate refused: "${(r as any).error.slice(0, 100)}"`, published: false };
        },
        { journalDir: dir },
      );
    } finally {
      await mount(['-o', 'remount,rw', journalFs]);
    }
  });

  it('journal unwritable mid-backup', async () => {
    const dir = path.join(journalFs, 'mid');
    mkdirSync(dir, { recursive: true });
    try {
      await nodeCase(
        'prepare: journal file system full before the VMs are saved',
        'refused before any side effect (the intent cannot be written, so the effect is not done)',
        async (run) => {
          const r = await run.through('classify');
          assert.ok(r.last.ok);
          await fillUp(journalFs);
          const p = await run.step('prepare', r.last.payload);
          assert.equal(p.ok, false);
          assert.match((p as any).error, /journal/);
          await fs.rm(path.join(journalFs, 'filler'), { force: true });
          return { note: `prepare refused: "${(p as any).error.slice(0, 100)}"`, backupId: r.last.payload.backupId, published: false };
        },
        { journalDir: dir, fallback: 'saved-state' },
      );
    } finally {
      await fs.rm(path.join(journalFs, 'filler'), { force: true });
    }
  });

  it('journal file system full while the VMs are on overlays', async () => {
    const dir = path.join(journalFs, 'overlays');
    mkdirSync(dir, { recursive: true });
    try {
      await nodeCase(
        'copy: journal file system full while the VMs run on overlays, space freed, host restarted',
        'copy refused naming the journal (its staging intent cannot be written); the overlays merged all the same (undo lines are best effort); the next start finds them merged and clears the set',
        async (run) => {
          const r = await run.through('post-snapshot');
          assert.ok(r.last.ok);
          await fillUp(journalFs);
          // tmpfs gives space by the page: the journal's own last page has room for a few lines;
          // fill it with newlines (blank lines are no entries) so that not one byte more fits
          const fd = await fs.open(run.journalFile, 'a');
          try {
            for (let i = 0; i < 8192; i++) await fd.write('\n');
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
          } finally {
            await fd.close();
          }
          const c = await run.step('copy', r.last.payload);
          assert.equal(c.ok, false);
          assert.match((c as any).error, /journal .*ENOSPC/);
          await run.settled(30_000);
          await assertNoFleeceFiles([world.host.imageDir]);
          const pendingBefore = pendingUndos(readJournal(run.journalFile)).map((u) => `${u.kind} ${u.vm}`);
          await fs.rm(path.join(journalFs, 'filler'), { force: true });
          await run.unload();
          await run.load();
          await run.host();
          const actions = (helper.getNode('host') as any).lastRecovery as { kind: string }[];
          assert.ok(!actions.some((a) => a.kind === 'merge'), 'nothing is merged twice');
          return {
            note: `copy refused: "${(c as any).error.slice(0, 80)}~"; journal then listed: ${pendingBefore.join(', ') || 'nothing'}; restart: ${actions.length} action(s)`,
            backupId: r.last.payload.backupId,
            published: false,
          };
        },
        { journalDir: dir },
      );
    } finally {
      await fs.rm(path.join(journalFs, 'filler'), { force: true });
    }
  });

  // ---- read-back verification: the domain directly, with a provider whose copy goes wrong ----

  async function domainCase(
    name: string,
    expected: string,
    provider: QemuProvider,
    run: (host: BackupHost) => Promise<Outcome>,
    timeouts: Partial<Timeouts> = {},
  ) {
    await faultCase(GROUP, name, expected, async () => {
      const root = world.host.repository;
      const before = await repositoryState(root);
      const journal = new Journal(path.join(mkdtempSync(path.join(os.tmpdir(), 'vmb-faults-journal-')), 'journal.jsonl'));
      const host = new BackupHost(provider, journal, {
        hostName: 'faulthost',
        repositoryRoot: root,
        timeouts: { ...DEFAULT_TIMEOUTS, ...timeouts },
      });
      let out: Outcome;
      try {
        out = await run(host);
        for (let i = 0; i < 300 && host.live.size > 0; i++) await sleep(100);
      } finally {
        await host.closeAll('test over');
        await provider.close();
        journal.close();
      }
      return check(journal.file, before, out, root);
    });
  }

  const upToCopy = async (host: BackupHost) => {
    const set = await host.enumerate();
    return host.postSnapshot(await host.snapshot(await host.prepare(host.classify(set, 'checkpoint'))));
  };

  it('a copy changed after its writer closed it is caught before it counts', async () => {
    class CorruptingProvider extends QemuProvider {
      override async exportDisk(
        view: PointInTimeView,
        disk: string,
        dest: string,
        onProgress?: (p: Progress) => void,
        options?: ExportOptions,
      ) {
        const done = await super.exportDisk(view, disk, dest, onProgress, options);
        if (/beta/.test(dest)) await corruptData(dest);
        return done;
      }
    }
    await domainCase(
      'copy: a disk copy corrupted once written',
      'not published: the copy is not as its writer left it (size, mtime, inode at its close; its sha256 and read-back check were of those bytes); set discarded, views released',
      new CorruptingProvider({ socketDir: world.host.socketDir }),
      async (host) => {
        const set = await upToCopy(host);
        const err = await host.copy(set, { concurrency: 2, compress: false }).then(
          () => undefined,
          (e: Error) => e,
        );
        assert.ok(err, 'the copy must fail');
        assert.match(
          err.message,
          /beta: disk-\S+\.qcow2: changed after it was written \(\d+b@\d+ns#\d+ -> \d+b@\d+ns#\d+\); not published/,
        );
        return { note: `copy refused: "${err.message.slice(0, 110)}"`, backupId: set.backupId, published: false };
      },
    );
  });

  it('a staged file changed before publishing is caught', async () => {
    let root = '';
    class MeddlingProvider extends QemuProvider {
      override async describe(vmId: string) {
        if (vmId === 'beta') {
          // alpha's disks are copied and checked by now (one VM read at a time; its file may still be
          // in its hash and flush, which give beta its place): change its disk copy
          const alphaDir = path.join(root, 'faulthost', 'alpha');
          const staging = (await fs.readdir(alphaDir)).find((d) => d.startsWith('.partial-'))!;
          const disk = (await fs.readdir(path.join(alphaDir, staging))).find((f) => f.startsWith('disk-'))!;
          await corruptData(path.join(alphaDir, staging, disk));
        }
        return super.describe(vmId);
      }
    }
    root = world.host.repository;
    await domainCase(
      'copy: a staged file changed between its check and the publish',
      'not published: the file is no longer the one hashed for the manifest (size, mtime, inode checked right before the rename)',
      new MeddlingProvider({ socketDir: world.host.socketDir }),
      async (host) => {
        const set = await upToCopy(host);
        const err = await host.copy(set, { concurrency: 1, compress: false }).then(
          () => undefined,
          (e: Error) => e,
        );
        assert.ok(err, 'the copy must fail');
        // caught right before the rename, or, if the change came before its hash was taken, there
        assert.match(err.message, /alpha\/disk-.*changed after it was (hashed for the manifest|written)/);
        return { note: `copy refused: "${err.message.slice(0, 110)}"`, backupId: set.backupId, published: false };
      },
    );
  });

  it('the second VM of a set cannot be published', async () => {
    await domainCase(
      'copy: publish of the second VM fails (its final directory already exists)',
      "the first VM's publish is taken back (all or none); the existing directory untouched; nothing of the set published",
      new QemuProvider({ socketDir: world.host.socketDir }),
      async (host) => {
        const set = await upToCopy(host);
        const blocker = path.join(host.repository.root, 'faulthost', 'beta', set.backupId);
        await fs.mkdir(blocker, { recursive: true });
        await fs.writeFile(path.join(blocker, 'keep.txt'), 'not ours');
        const err = await host.copy(set, { concurrency: 2, compress: false }).then(
          () => undefined,
          (e: Error) => e,
        );
        assert.ok(err, 'the copy must fail');
        assert.match(err.message, /already exists; not replaced/);
        assert.equal(await fs.readFile(path.join(blocker, 'keep.txt'), 'utf8'), 'not ours');
        const alpha = await fs.stat(path.join(host.repository.root, 'faulthost', 'alpha', set.backupId)).then(
          () => true,
          () => false,
        );
        assert.equal(alpha, false, 'alpha, published first, was taken back');
        await fs.rm(blocker, { recursive: true });
        return { note: `copy refused: "${err.message.slice(0, 100)}"; alpha taken back`, backupId: set.backupId, published: false };
      },
    );
  });

  it('a crash between two publish renames', async () => {
    await domainCase(
      'recovery: Node-RED died between the publish renames of two VMs',
      "recovery takes the half-published set back (alpha unpublished, beta's staging removed): all or none",
      new QemuProvider({ socketDir: world.host.socketDir }),
      async (host) => {
        const set = await upToCopy(host);
        await host.copy(set, { concurrency: 2, compress: false });
        // what a SIGKILL right after alpha's rename leaves: beta still staged, the journal cut there
        const root = host.repository.root;
        await fs.rename(
          path.join(root, 'faulthost', 'beta', set.backupId),
          path.join(root, 'faulthost', 'beta', `.partial-${set.backupId}`),
        );
        const entries = readJournal(host.journal.file);
        const cut = entries.findIndex((e) => e.backupId === set.backupId && e.vm === 'alpha' && e.op === 'publish' && e.phase === 'done');
        assert.ok(cut > 0);
        host.journal.compact(entries.slice(0, cut + 1));
        const actions = await recover(host.journal, host.provider, host.repository, 30_000, { hostName: 'faulthost' });
        const kinds = actions.map((a) => `${a.kind} ${a.vm}`);
        assert.ok(kinds.includes('unpublish alpha') && kinds.includes('discard beta'), kinds.join(', '));
        return { note: `recovery: ${kinds.join(', ')}`, backupId: set.backupId, published: false };
      },
    );
  });

  it('sessionTimeout passes during the copy', async () => {
    class SlowProvider extends QemuProvider {
      override async exportDisk(
        view: PointInTimeView,
        disk: string,
        dest: string,
        onProgress?: (p: Progress) => void,
        options?: ExportOptions,
      ) {
        // a slow repository: 8 s per disk, unless the set is aborted meanwhile
        await new Promise<void>((resolve, reject) => {
          const t = setTimeout(resolve, 8000);
          options?.signal?.addEventListener('abort', () => {
            clearTimeout(t);
            reject(new Error('copy cancelled'));
          });
        });
        return super.exportDisk(view, disk, dest, onProgress, options);
      }
    }
    await domainCase(
      'copy: sessionTimeout passes while copying',
      'the copy is cancelled, then the set aborted: views released, staging removed, nothing published',
      new SlowProvider({ socketDir: world.host.socketDir }),
      async (host) => {
        const t0 = Date.now();
        const set = await upToCopy(host);
        const err = await host.copy(set, { concurrency: 2, compress: false }).then(
          () => undefined,
          (e: Error) => e,
        );
        assert.ok(err, 'the copy must fail');
        assert.match(err.message, /sessionTimeout/);
        return {
          note: `copy refused after ${((Date.now() - t0) / 1000).toFixed(1)} s: "${err.message.slice(0, 90)}"`,
          backupId: set.backupId,
          published: false,
        };
      },
      { sessionMs: 3000 },
    );
  });
});
