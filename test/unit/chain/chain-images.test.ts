// Parent selection, chain verification and flatten on real qcow2 chains (chain-repo.ts): every point
// flattened holds exactly what was written up to it and nothing written after; each kind of broken
// link (a removed parent, a wrong backing string, an absolute one, one leaving the VM's folder, a
// parent with a bad sha256, a resized disk) is named, by the verifier and by the parent search,
// and flatten refuses it without writing anything.
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { findParent, planDiskChain } from '../../../src/chain';
import { flattenDisk, FlattenRefused } from '../../../src/chain/flatten';
import { verifyBackup, verifyRepository, type BackupReport } from '../../../src/verify';
import {
  compare,
  DISK,
  FILE,
  HAVE_QEMU_IMG,
  HOST,
  IDS,
  makeChainRepo,
  run,
  setBacking,
  SIZE,
  VM,
  writeManifest,
  type ChainRepo,
} from './chain-repo';
import { flipByte } from '../prune/build-repo';

const RESTORE_CLI = path.resolve(__dirname, '../../../src/cli/restore.js');
const VERIFY_CLI = path.resolve(__dirname, '../../../src/cli/verify.js');
const problemsOf = (r: BackupReport) => r.problems.map((p) => `${p.file}: ${p.problem}`);

(HAVE_QEMU_IMG ? describe : describe.skip)('incremental chains on real images', function () {
  this.timeout(120_000);
  let tmp: string;
  let repo: ChainRepo;
  const top = () => repo.dirs[repo.dirs.length - 1];
  const parentOf = (virtualSize = SIZE, disk = DISK) => findParent({ root: repo.root, host: HOST, vm: VM, disk, virtualSize });
  const flatten = (dir: string, out: string, format: 'qcow2' | 'raw' = 'qcow2') =>
    flattenDisk({ backupDir: dir, disk: DISK, out, format, verify: (d) => verifyBackup(d) });

  beforeEach(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmb-chain-'));
    repo = makeChainRepo(tmp);
  });
  afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('the chain is what stock tools see: qemu-img info --backing-chain lists every level, relative', () => {
    const chain = JSON.parse(run('qemu-img', ['info', '--output=json', '--backing-chain', '-f', 'qcow2', path.join(top(), FILE)]));
    assert.equal(chain.length, 4);
    assert.equal(chain[0]['backing-filename'], `../${IDS[2]}/${FILE}`);
    assert.equal(chain[3]['backing-filename'], undefined);
  });

  it('every point verifies, and the repository as a whole', async () => {
    for (const dir of repo.dirs) {
      const r = await verifyBackup(dir);
      assert.deepEqual(problemsOf(r), [], dir);
      assert.equal(r.files.find((f) => f.name === FILE)?.imageCheck, 'ok');
    }
    const all = await verifyRepository(repo.root);
    assert.equal(all.ok, true, JSON.stringify(all.backups.map(problemsOf)));
    assert.equal(all.backups.length, 4);
    const cli = spawnSync(process.execPath, [VERIFY_CLI, repo.root], { encoding: 'utf8' });
    assert.equal(cli.status, 0, cli.stdout + cli.stderr);
    assert.match(cli.stdout, new RegExp(`${IDS[3]} offline offline, incremental on ${IDS[2]} \\(depth 3\\)`));
  });

  it('every point flattened equals the data written up to it, and not what came after', async () => {
    for (let i = 0; i < repo.dirs.length; i++) {
      const out = path.join(tmp, `flat-${i}.qcow2`);
      const r = await flatten(repo.dirs[i], out);
      assert.deepEqual(r.chain, IDS.slice(0, i + 1).reverse());
      assert.equal(compare(repo.refs[i], 'raw', out, 'qcow2'), 0, `point ${i} differs from its reference`);
      if (i + 1 < repo.refs.length)
        assert.equal(compare(repo.refs[i + 1], 'raw', out, 'qcow2'), 1, `point ${i} holds writes of point ${i + 1}`);
      const info = JSON.parse(run('qemu-img', ['info', '--output=json', out]));
      assert.equal(info['backing-filename'], undefined, 'a flattened image stands alone');
      assert.equal(info['virtual-size'], SIZE);
    }
    const raw = path.join(tmp, 'flat-top.raw');
    await flatten(top(), raw, 'raw');
    assert.ok(fs.readFileSync(raw).equals(fs.readFileSync(repo.refs[3])), 'raw output is byte for byte the reference');
  });

  it("the parent search returns the newest backup with its depth and the chain's full", async () => {
    const p = await parentOf();
    assert.equal(p.ok, true, JSON.stringify(p));
    if (!p.ok) return;
    assert.equal(p.backupId, IDS[3]);
    assert.equal(p.depth, 3);
    assert.equal(p.fileName, FILE);
    assert.equal(p.fullCreatedAt, '2026-12-01T01:00:00.000Z');
    // a staging folder of a newer, unpublished backup is never a parent
    fs.mkdirSync(path.join(repo.vmDir, '.partial-20261201T050000Z-inc004'));
    assert.equal(((await parentOf()) as { backupId: string }).backupId, IDS[3]);
  });

  it('planDiskChain: an incremental on the newest backup, a full with its reason otherwise; bad names refused naming the field', async () => {
    const bitmap = { state: 'ok' as const, name: 'vmbackup', granularity: 65536, persistent: true, since: IDS[3] };
    const base = { root: repo.root, host: HOST, vm: VM, disk: DISK, virtualSize: SIZE, bitmap };
    const inc = await planDiskChain({ ...base, policy: { mode: 'incremental' } });
    assert.equal(inc.mode, 'incremental');
    if (inc.mode === 'incremental') assert.deepEqual([inc.parent.backupId, inc.depth], [IDS[3], 4]);
    const every = await planDiskChain({ ...base, policy: { mode: 'incremental', fullEvery: { kind: 'count', count: 4 } } });
    assert.deepEqual([every.mode, every.mode === 'full' && every.reason], ['full', 'policy-full-every']);
    const full = await planDiskChain({ ...base, policy: { mode: 'full' } });
    assert.deepEqual([full.mode, full.mode === 'full' && full.reason], ['full', 'policy-full']);
    const lost = await planDiskChain({ ...base, bitmap: { state: 'inconsistent', name: 'vmbackup' }, policy: { mode: 'incremental' } });
    assert.deepEqual([lost.mode, lost.mode === 'full' && lost.reason], ['full', 'bitmap-inconsistent']);
    await assert.rejects(findParent({ ...base, vm: '../vm-chain' }), /^PathRefused: vm: /);
    await assert.rejects(findParent({ ...base, host: '' }), /^PathRefused: host: /);
  });

  it('first backup, new disk and resized disk are named by the parent search', async () => {
    const none = await findParent({ root: repo.root, host: HOST, vm: 'vm-other', disk: DISK, virtualSize: SIZE });
    assert.deepEqual([none.ok, !none.ok && none.reason], [false, 'first-backup']);
    const newDisk = await parentOf(SIZE, 'drive-virtio1');
    assert.deepEqual([newDisk.ok, !newDisk.ok && newDisk.reason], [false, 'new-disk']);
    const resized = await parentOf(2 * SIZE);
    assert.equal(resized.ok, false);
    if (!resized.ok) {
      assert.equal(resized.reason, 'resized');
      assert.match(resized.detail, new RegExp(`${IDS[3]}'s disk ${DISK} is ${SIZE} bytes, the disk is now ${2 * SIZE}`));
    }
  });

  it('a removed parent is named by verify, the parent search and flatten (which writes nothing)', async () => {
    fs.rmSync(repo.dirs[1], { recursive: true });
    const r = await verifyBackup(top());
    assert.equal(r.ok, false);
    assert.ok(
      r.problems.some(
        (p) => p.file === repo.dirs[1] && new RegExp(`parent ${IDS[1]} of ${IDS[2]} \\(disk ${DISK}\\): does not exist`).test(p.problem),
      ),
      problemsOf(r).join('\n'),
    );
    const p = await parentOf();
    assert.deepEqual([p.ok, !p.ok && p.reason], [false, 'parent-missing']);
    const out = path.join(tmp, 'flat.qcow2');
    await assert.rejects(
      flatten(top(), out),
      (err: Error) => err instanceof FlattenRefused && err.field === 'backup' && err.message.includes(repo.dirs[1]),
    );
    assert.equal(fs.existsSync(out), false);
    assert.deepEqual(
      fs.readdirSync(tmp).filter((n) => n.includes('partial')),
      [],
    );
    // without qemu-img the manifests still show the missing link (through the parent that lists it)
    const quick = await verifyBackup(top(), { skipImageCheck: true });
    assert.ok(
      quick.problems.some((p) => p.problem.includes(`${repo.dirs[1]}: chain of ${IDS[2]}`) && p.problem.includes('does not exist')),
      problemsOf(quick).join('\n'),
    );
  });

  it('a wrong backing string (an image stacked on another parent than its manifest says) is named', async () => {
    setBacking(repo.dirs[2], 2, `../${IDS[0]}/${FILE}`);
    const file = path.join(repo.dirs[2], FILE);
    const r = await verifyBackup(top());
    assert.ok(
      r.problems.some(
        (p) =>
          p.file === file && p.problem.includes(`its backing file is "../${IDS[0]}/${FILE}", the manifest says "../${IDS[1]}/${FILE}"`),
      ),
      problemsOf(r).join('\n'),
    );
    // the incremental itself fails on its own link, not only through its children
    assert.ok((await verifyBackup(repo.dirs[2])).problems.some((p) => p.file === file));
    const p = await parentOf();
    assert.deepEqual([p.ok, !p.ok && p.reason], [false, 'parent-invalid']);
    await assert.rejects(flatten(top(), path.join(tmp, 'flat.qcow2')), FlattenRefused);
  });

  it('an absolute backing path is refused before anything opens it (it names a FIFO: opening it would hang)', async () => {
    const fifo = path.join(tmp, 'trap.qcow2');
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
    setBacking(repo.dirs[2], 2, fifo);
    const file = path.join(repo.dirs[2], FILE);
    const r = await verifyBackup(repo.dirs[2]);
    assert.ok(
      r.problems.some(
        (p) => p.file === file && p.problem.includes(`its backing file is "${fifo}", the manifest says "../${IDS[1]}/${FILE}"`),
      ),
      problemsOf(r).join('\n'),
    );
    const p = await parentOf();
    assert.deepEqual([p.ok, !p.ok && p.reason], [false, 'parent-invalid']);
    await assert.rejects(flatten(top(), path.join(tmp, 'flat.qcow2')), FlattenRefused);
    // a full that names a backing file is checked the same way: its header first
    setBacking(repo.dirs[0], 0, fifo);
    const full = await verifyBackup(repo.dirs[0]);
    assert.deepEqual(problemsOf(full), [`${path.join(repo.dirs[0], FILE)}: has a backing file (${fifo}); a backup disk must stand alone`]);
  });

  it("a backing path leaving the VM's folder is refused (another VM's backup, same file name)", async () => {
    // the same bytes under another VM: a chain must never reach there, even when the data would match
    const other = path.join(repo.root, HOST, 'vm-other', IDS[1]);
    fs.mkdirSync(path.dirname(other), { recursive: true });
    fs.cpSync(repo.dirs[1], other, { recursive: true });
    const escaping = `../../vm-other/${IDS[1]}/${FILE}`;
    setBacking(repo.dirs[2], 2, escaping);
    const file = path.join(repo.dirs[2], FILE);
    // the manifest cannot say it (schema); the image does
    const r = await verifyBackup(repo.dirs[2]);
    assert.ok(
      r.problems.some((p) => p.file === file && p.problem.includes(`its backing file is "${escaping}"`)),
      problemsOf(r).join('\n'),
    );
    const links = await import('../../../src/chain/links.js');
    const where = links.resolveBacking(file, escaping, repo.vmDir);
    assert.ok('error' in where && /leaves the VM's folder/.test(where.error));
    const p = await parentOf();
    assert.deepEqual([p.ok, !p.ok && p.reason], [false, 'parent-invalid']);
  });

  it("a parent with a bad sha256 fails every backup above it, naming the parent's file", async () => {
    const damaged = path.join(repo.dirs[1], FILE);
    flipByte(damaged, fs.statSync(damaged).size - 100); // inside a data cluster: the image stays readable
    const r = await verifyBackup(top());
    assert.equal(r.ok, false);
    assert.ok(
      r.problems.some((p) => p.file === path.join(top(), FILE) && p.problem.includes(`${damaged}: sha256`)),
      problemsOf(r).join('\n'),
    );
    // the search checks the hash of the candidate itself
    const newest = path.join(top(), FILE);
    flipByte(newest, fs.statSync(newest).size - 100);
    const p = await parentOf();
    assert.equal(p.ok, false);
    if (!p.ok) {
      assert.equal(p.reason, 'parent-invalid');
      assert.match(p.detail, /has sha256 [0-9a-f]{64}, its manifest says/);
    }
    await assert.rejects(flatten(repo.dirs[2], path.join(tmp, 'flat.qcow2')), /does not verify/);
  });

  it('a chain whose virtual size changes between levels is named', async () => {
    run('qemu-img', ['resize', '-q', '-f', 'qcow2', path.join(top(), FILE), String(2 * SIZE)]);
    writeManifest(top(), 3);
    const r = await verifyBackup(top());
    assert.ok(
      r.problems.some((p) => /the chain's virtual size changed/.test(p.problem)),
      problemsOf(r).join('\n'),
    );
    const p = await parentOf(2 * SIZE);
    assert.deepEqual([p.ok, !p.ok && p.reason], [false, 'parent-invalid']);
  });

  it("an incremental whose manifest depth does not follow its parent's is named", async () => {
    writeManifest(top(), 3, (m) => {
      m.files[1].chain!.depth = 5;
    });
    const r = await verifyBackup(top());
    assert.ok(
      r.problems.some((p) => /has depth 5 but its parent .* has depth 2/.test(p.problem)),
      problemsOf(r).join('\n'),
    );
  });

  it('a parent that is not older than its child is refused (no chain can loop)', async () => {
    const file = path.join(repo.dirs[1], FILE);
    run('qemu-img', ['rebase', '-q', '-u', '-f', 'qcow2', '-b', `../${IDS[3]}/${FILE}`, '-F', 'qcow2', file]);
    writeManifest(repo.dirs[1], 1, (m) => {
      Object.assign(m.files[1].chain!, { parent: IDS[3], backing: `../${IDS[3]}/${FILE}`, depth: 4 });
      m.chain = { parent: IDS[3], depth: 4 };
    });
    const r = await verifyBackup(repo.dirs[1]);
    assert.ok(
      r.problems.some((p) => p.file === file && p.problem.includes(`its parent ${IDS[3]} is not an earlier backup than ${IDS[1]}`)),
      problemsOf(r).join('\n'),
    );
  });

  it('a VM chain summary that disagrees with its disks is named', async () => {
    writeManifest(top(), 3, (m) => {
      m.chain = { parent: IDS[1], depth: 3 };
    });
    const r = await verifyBackup(top());
    assert.deepEqual(problemsOf(r), [
      `${path.join(top(), 'manifest.json')}: chain says parent ${IDS[1]} depth 3, its disks say parent ${IDS[2]} depth 3`,
    ]);
  });

  it('flatten never overwrites, and names the argument at fault', async () => {
    const out = path.join(tmp, 'exists.qcow2');
    fs.writeFileSync(out, 'keep me');
    await assert.rejects(
      flatten(top(), out),
      (err: Error) => err instanceof FlattenRefused && err.field === 'out' && /exists; not overwritten/.test(err.message),
    );
    assert.equal(fs.readFileSync(out, 'utf8'), 'keep me');
    await assert.rejects(
      flattenDisk({ backupDir: top(), disk: 'nope', out: path.join(tmp, 'x.qcow2'), verify: verifyBackup }),
      (err: Error) => err instanceof FlattenRefused && err.field === 'disk' && err.message.includes(DISK),
    );
    await assert.rejects(
      flatten(top(), path.join(repo.vmDir, 'x.qcow2')),
      (err: Error) => err instanceof FlattenRefused && err.field === 'out',
    );
    assert.deepEqual(fs.readdirSync(tmp).sort(), ['exists.qcow2', 'ref-0.raw', 'ref-1.raw', 'ref-2.raw', 'ref-3.raw', 'ref.raw', 'repo']);
  });

  it('vm-backup-restore flatten: 0 and the image, 1 naming the refusal, 2 on usage errors', () => {
    const out = path.join(tmp, 'cli.raw');
    const ok = spawnSync(process.execPath, [RESTORE_CLI, 'flatten', repo.dirs[2], '--disk', DISK, '--out', out, '--format', 'raw'], {
      encoding: 'utf8',
    });
    assert.equal(ok.status, 0, ok.stderr);
    assert.match(ok.stdout, new RegExp(`flattened disk ${DISK} of ${IDS[2]} over 2 parents down to full ${IDS[0]}`));
    assert.equal(compare(repo.refs[2], 'raw', out, 'raw'), 0);
    const again = spawnSync(process.execPath, [RESTORE_CLI, 'flatten', repo.dirs[2], '--disk', DISK, '--out', out], { encoding: 'utf8' });
    assert.equal(again.status, 1);
    assert.match(again.stderr, /--out: .* exists; not overwritten/);
    for (const args of [
      ['flatten', repo.dirs[2], '--out', out + '2'],
      ['flatten', repo.dirs[2], '--disk', DISK],
      ['flatten', repo.dirs[2], '--disk', DISK, '--out', out + '2', '--format', 'vmdk'],
      ['unflatten'],
    ]) {
      const bad = spawnSync(process.execPath, [RESTORE_CLI, ...args], { encoding: 'utf8' });
      assert.equal(bad.status, 2, args.join(' '));
    }
    assert.equal(fs.existsSync(out + '2'), false);
  });
});
