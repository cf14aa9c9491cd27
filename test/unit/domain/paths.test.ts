import * as assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { checkRoot, inside } from '../../../src/repository/paths';
import { ArtifactRepository, removeStaging } from '../../../src/repository/repository';
import { stagingWriters } from '../../../src/repository/writers';
import { isSafeName, newBackupId } from '../../../src/util/ids';

describe('paths never leave the repository root', () => {
  it('joins plain names only', () => {
    assert.equal(inside('/repo', 'vm', 'host', 'vm1', '20260101T000000Z-abcdef'), '/repo/host/vm1/20260101T000000Z-abcdef');
    for (const bad of ['..', '../x', 'a/b', '.hidden', '', 'a\0b', 'x'.repeat(65), '..a', 'a..b']) {
      assert.throws(() => inside('/repo', 'vm', 'host', bad), /^PathRefused: vm: /, JSON.stringify(bad));
    }
  });
  it('requires absolute configured roots', () => {
    assert.equal(checkRoot('/a/b/../c', 'repository'), '/a/c');
    assert.throws(() => checkRoot('rel', 'repository'), /repository: "rel" must be an absolute path/);
    assert.throws(() => checkRoot('', 'socketDir'), /socketDir: is required/);
  });
  it('stages beside the final directory', () => {
    const repo = new ArtifactRepository('/repo');
    assert.equal(repo.stagingDir('h', 'v', '20260101T000000Z-abcdef'), '/repo/h/v/.partial-20260101T000000Z-abcdef');
    assert.throws(() => repo.stagingDir('h', 'v', '../../etc'), /backupId/);
  });
  it('makes backup ids that sort by time and are safe names', () => {
    const id = newBackupId(new Date('2026-11-22T10:15:00.123Z'));
    assert.match(id, /^20261122T101500Z-[a-z0-9]{6}$/);
    assert.ok(isSafeName(id));
  });
});

describe('removeStaging: the discard of a staging directory', () => {
  let tmp = '';
  beforeEach(() => (tmp = mkdtempSync(path.join(os.tmpdir(), 'vmb-discard-'))));
  afterEach(() => {
    spawnSync('chattr', ['-R', '-i', tmp]);
    rmSync(tmp, { recursive: true, force: true });
  });

  it("ends a copy's qemu-nbd still waiting for a client in it (Node-RED killed mid-copy), and only that one", async function () {
    if (spawnSync('qemu-nbd', ['--version']).status !== 0) this.skip();
    const dir = path.join(tmp, '.partial-x');
    const other = path.join(tmp, '.partial-y');
    const serve = (d: string) => {
      mkdirSync(d);
      const img = path.join(d, 'disk.qcow2');
      spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', img, '1M']);
      return spawn('qemu-nbd', [`--socket=${path.join(tmp, `${path.basename(d)}.sock`)}`, '--format=qcow2', img], { stdio: 'ignore' });
    };
    const mine = serve(dir);
    const theirs = serve(other);
    try {
      await new Promise((r) => setTimeout(r, 300));
      assert.deepEqual(await stagingWriters(dir), [mine.pid]);
      await removeStaging(dir);
      assert.equal(existsSync(dir), false);
      const ended = await Promise.race([
        new Promise((r) => ((mine.exitCode ?? mine.signalCode) !== null ? r(true) : mine.once('exit', () => r(true)))),
        new Promise((r) => setTimeout(() => r(false), 3000)),
      ]);
      assert.equal(ended, true, 'its qemu-nbd ended');
      assert.equal(theirs.exitCode ?? theirs.signalCode, null, "another staging directory's qemu-nbd runs on");
    } finally {
      mine.kill('SIGKILL');
      theirs.kill('SIGKILL');
    }
  });

  it('is done when a folder above it was replaced by a file (the directory cannot exist)', async () => {
    writeFileSync(path.join(tmp, 'host'), 'not a directory');
    await removeStaging(path.join(tmp, 'host', 'vm', '.partial-x'));
  });

  it('fails while a file in it cannot be removed (an immutable directory), so the undo is retried', async function () {
    const dir = path.join(tmp, '.partial-x');
    mkdirSync(dir);
    writeFileSync(path.join(dir, 'disk.qcow2'), 'x');
    if (spawnSync('chattr', ['+i', dir]).status !== 0) this.skip(); // a file system without the flag
    // Node's rm reports this one as ENOTDIR (it tries the file as a directory after EPERM)
    await assert.rejects(removeStaging(dir));
    spawnSync('chattr', ['-i', dir]);
    await removeStaging(dir);
  });
});
