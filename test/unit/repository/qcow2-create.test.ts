// The empty qcow2 image written in-process (src/repository/qcow2-create.ts) against the one
// `qemu-img create` writes: what QEMU's own tools say of it (check, info), that data written into
// it through QEMU reads back, and that its holes read through to the backing file.
import * as assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createQcow2, qcow2Bytes, type NewQcow2 } from '../../../src/repository/qcow2-create';
import { runProgram } from '../../../src/util/run';

const GiB = 1024 ** 3;

async function info(file: string): Promise<Record<string, unknown>> {
  const j = JSON.parse((await runProgram('qemu-img', ['info', '--output=json', file])).stdout) as Record<string, any>;
  // what differs between any two files: their names and sizes on disk
  delete j.filename;
  delete j['actual-size'];
  delete j['dirty-flag'];
  return j;
}

describe('qcow2 image created in-process (no qemu-img create per disk)', function () {
  this.timeout(30_000);
  let dir: string;
  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmb-qcow2-'));
    await runProgram('qemu-img', ['create', '-q', '-f', 'qcow2', path.join(dir, 'parent.qcow2'), String(64 << 20)]);
    await runProgram('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 64M', path.join(dir, 'parent.qcow2')]);
  });
  afterEach(() => fs.rm(dir, { recursive: true, force: true }));

  const shapes: [string, NewQcow2][] = [
    ['a 64 MiB incremental on its parent', { size: 64 << 20, backing: 'parent.qcow2' }],
    ['the same with zstd compression', { size: 64 << 20, backing: 'parent.qcow2', zstd: true }],
    ['a full of 8 GiB, no backing', { size: 8 * GiB }],
    ['4 TiB, the largest with a one-cluster L1 table', { size: 4096 * GiB, backing: 'parent.qcow2' }],
    ['an odd number of sectors', { size: (64 << 20) + 512 * 3, backing: 'parent.qcow2' }],
  ];
  for (const [what, shape] of shapes) {
    it(`${what}: qemu-img check is clean and qemu-img info says what it says of qemu-img create's`, async () => {
      const ours = path.join(dir, 'ours.qcow2');
      const theirs = path.join(dir, 'theirs.qcow2');
      assert.ok(qcow2Bytes(shape), 'written in-process, not left to qemu-img');
      await createQcow2(ours, shape, '/nonexistent/qemu-img');
      await runProgram('qemu-img', [
        'create',
        '-q',
        '-f',
        'qcow2',
        ...(shape.zstd ? ['-o', 'compression_type=zstd'] : []),
        ...(shape.backing ? ['-b', shape.backing, '-F', 'qcow2'] : []),
        theirs,
        String(shape.size),
      ]);
      await runProgram('qemu-img', ['check', ours]);
      assert.deepEqual(await info(ours), await info(theirs));
      assert.equal((await fs.stat(ours)).size, (await fs.stat(theirs)).size, 'the same length as qemu-img create writes');
    });
  }

  it('data written through QEMU reads back, holes read the backing file, and the image stays clean', async () => {
    const ours = path.join(dir, 'ours.qcow2');
    await createQcow2(ours, { size: 64 << 20, backing: 'parent.qcow2' }, '/nonexistent/qemu-img');
    await runProgram('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 1M 3M', '-c', 'write -P 0x5b 40M 64k', ours]);
    await runProgram('qemu-io', [
      '-f',
      'qcow2',
      '-c',
      'read -P 0x5a 1M 3M',
      '-c',
      'read -P 0x5b 40M 64k',
      '-c',
      'read -P 0x11 0 1M',
      '-c',
      'read -P 0x11 48M 16M',
      ours,
    ]);
    const out = (await runProgram('qemu-img', ['check', '--output=json', ours])).stdout;
    const check = JSON.parse(out) as { 'check-errors': number; leaks?: number; corruptions?: number; 'allocated-clusters': number };
    assert.equal(check['check-errors'], 0);
    assert.equal(check.leaks ?? 0, 0);
    assert.equal(check.corruptions ?? 0, 0);
    assert.equal(check['allocated-clusters'], 49, '3 MiB + 64 KiB of data in 64 KiB clusters');
  });

  it('compressed writes (the compress option) land as zstd clusters and read back', async () => {
    const ours = path.join(dir, 'ours.qcow2');
    await createQcow2(ours, { size: 64 << 20, zstd: true }, '/nonexistent/qemu-img');
    await runProgram('qemu-io', [
      '--image-opts',
      '-c',
      'write -P 0x33 0 1M',
      `driver=compress,file.driver=qcow2,file.file.driver=file,file.file.filename=${ours}`,
    ]);
    await runProgram('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0x33 0 1M', ours]);
    const check = JSON.parse((await runProgram('qemu-img', ['check', '--output=json', ours])).stdout) as Record<string, number>;
    assert.equal(check['check-errors'], 0);
    assert.equal(check['compressed-clusters'], 16, 'every cluster of the megabyte compressed');
    const fmt = (JSON.parse((await runProgram('qemu-img', ['info', '--output=json', ours])).stdout) as any)['format-specific'].data;
    assert.equal(fmt['compression-type'], 'zstd');
  });

  it('shapes it does not write are left to qemu-img: above 4 TiB, an unaligned size, an empty or overlong backing string', () => {
    assert.equal(qcow2Bytes({ size: 4097 * GiB }), undefined);
    assert.equal(qcow2Bytes({ size: 1000 }), undefined);
    assert.equal(qcow2Bytes({ size: 0 }), undefined);
    assert.equal(qcow2Bytes({ size: 1 << 20, backing: '' }), undefined);
    assert.equal(qcow2Bytes({ size: 1 << 20, backing: 'x'.repeat(1024) }), undefined);
  });

  it('never writes through a link planted under its name', async () => {
    const target = path.join(dir, 'victim');
    await fs.writeFile(target, 'keep me');
    await fs.symlink(target, path.join(dir, 'ours.qcow2'));
    await assert.rejects(createQcow2(path.join(dir, 'ours.qcow2'), { size: 1 << 20 }, 'qemu-img'), /symbolic link/);
    assert.equal(await fs.readFile(target, 'utf8'), 'keep me');
  });
});
