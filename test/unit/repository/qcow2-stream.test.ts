// The qcow2 image written sequentially in-process (src/repository/qcow2-stream.ts) against what
// QEMU's own tools say of it: check finds no error and no leak, compare finds it equal to a raw
// reference built here, its holes read the backing file, info names the backing file; the sha256
// it returns is the file's; the refcounts count every cluster once whatever the layout's shape.
import * as assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { qcow2StreamLayout, Qcow2StreamWriter, STREAM_CLUSTER as C, type Qcow2StreamPlan } from '../../../src/repository/qcow2-stream';
import { runProgram } from '../../../src/util/run';

const MiB = 1 << 20;
const GiB = 1024 ** 3;
const COPIED = 1n << 63n;

async function sha256(file: string): Promise<string> {
  return createHash('sha256')
    .update(await fs.readFile(file))
    .digest('hex');
}

/** qemu-img check: no error, no leak, no corruption; the allocated clusters and where the image ends */
async function checkClean(file: string, allocated: number, bytes: number): Promise<void> {
  // exits non-zero on errors or leaks: runProgram rejects
  const out = (await runProgram('qemu-img', ['check', '--output=json', file])).stdout;
  const check = JSON.parse(out) as Record<string, number>;
  assert.equal(check['check-errors'], 0);
  assert.equal(check.leaks ?? 0, 0);
  assert.equal(check.corruptions ?? 0, 0);
  assert.equal(check['allocated-clusters'] ?? 0, allocated); // (left out when 0)
  assert.equal(check['image-end-offset'], bytes);
}

/** The metadata as QEMU reads it: each cluster's refcount, and each guest cluster's L2 entry. */
function parse(metadata: Buffer): { refcounts: number[]; l2: Map<number, bigint> } {
  const l1Size = metadata.readUInt32BE(36);
  const l1At = Number(metadata.readBigUInt64BE(40));
  const tableAt = Number(metadata.readBigUInt64BE(48));
  const tableClusters = metadata.readUInt32BE(56);
  const refcounts: number[] = [];
  for (let b = 0; b < (tableClusters * C) / 8; b++) {
    const block = Number(metadata.readBigUInt64BE(tableAt + b * 8));
    if (block === 0) continue;
    assert.equal(block % C, 0);
    for (let j = 0; j < C / 2; j++) {
      const n = metadata.readUInt16BE(block + 2 * j);
      if (n) refcounts[b * (C / 2) + j] = n;
    }
  }
  const l2 = new Map<number, bigint>();
  for (let r = 0; r < l1Size; r++) {
    const e = metadata.readBigUInt64BE(l1At + r * 8);
    if (e === 0n) continue;
    assert.equal(e & COPIED, COPIED, 'L1 entries COPIED');
    const at = Number(e & ~COPIED);
    assert.ok(at < metadata.length, `L2 table of region ${r} in the metadata`);
    for (let j = 0; j < C / 8; j++) {
      const d = metadata.readBigUInt64BE(at + j * 8);
      if (d !== 0n) l2.set(r * (C / 8) + j, d);
    }
  }
  return { refcounts, l2 };
}

/** every cluster of the file counted exactly once, nothing beyond; each listed cluster mapped to its data cluster */
function assertLayout(p: Qcow2StreamPlan): { dataOffset: number; fileSize: number; blocks: number } {
  const { metadata, dataOffset, fileSize } = qcow2StreamLayout(p);
  assert.equal(metadata.length, dataOffset);
  assert.equal(fileSize, dataOffset + p.clusters.length * C);
  const { refcounts, l2 } = parse(metadata);
  const fileClusters = fileSize / C;
  assert.equal(refcounts.length, fileClusters, 'nothing counted beyond the end of the file');
  for (let n = 0; n < fileClusters; n++) if (refcounts[n] !== 1) assert.fail(`cluster ${n} has refcount ${refcounts[n]}`);
  assert.equal(l2.size, p.clusters.length);
  p.clusters.forEach((c, i) => assert.equal(l2.get(c), BigInt(dataOffset + i * C) | COPIED, `guest cluster ${c}`));
  const tableClusters = metadata.readUInt32BE(56);
  let blocks = 0;
  for (let b = 0; b < (tableClusters * C) / 8; b++) if (metadata.readBigUInt64BE(Number(metadata.readBigUInt64BE(48)) + b * 8)) blocks++;
  return { dataOffset, fileSize, blocks };
}

/** Stream `data` (one Buffer of 64 KiB per planned cluster) into `file`, one cluster a write. */
async function stream(file: string, plan: Qcow2StreamPlan, data: Buffer[]): Promise<{ bytes: number; sha256: string }> {
  const w = await Qcow2StreamWriter.create(file, plan);
  // one buffer reused for every cluster, refilled only once the write before resolved
  const buf = Buffer.alloc(C);
  for (const d of data) {
    d.copy(buf);
    await w.write(buf);
    buf.fill(0xee);
  }
  assert.equal(w.written, data.length * C);
  return w.finish();
}

describe('qcow2 image streamed in file order (hashed as written)', function () {
  this.timeout(60_000);
  let dir: string;
  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmb-qcow2s-'));
  });
  afterEach(() => fs.rm(dir, { recursive: true, force: true }));

  it('no backing, scattered clusters (the first, the odd-sized last): check clean, equal to the raw disk, sha256 the file', async () => {
    const size = 10 * MiB + 3 * 512; // the last cluster holds 1.5 KiB of the disk
    const last = Math.ceil(size / C) - 1;
    const clusters = [0, 1, 17, 90, last];
    const data = clusters.map((c) =>
      c === last ? Buffer.concat([randomBytes(size - c * C), Buffer.alloc(C - (size - c * C))]) : randomBytes(C),
    );
    const raw = Buffer.alloc(size);
    clusters.forEach((c, i) => data[i].copy(raw, c * C, 0, Math.min(C, size - c * C)));
    await fs.writeFile(path.join(dir, 'ref.raw'), raw);

    const ours = path.join(dir, 'ours.qcow2');
    assertLayout({ size, clusters });
    const done = await stream(ours, { size, clusters }, data);
    assert.equal(done.bytes, (await fs.stat(ours)).size);
    assert.equal(done.sha256, await sha256(ours));
    await checkClean(ours, clusters.length, done.bytes);
    await runProgram('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', ours, path.join(dir, 'ref.raw')]);
    const info = JSON.parse((await runProgram('qemu-img', ['info', '--output=json', ours])).stdout) as Record<string, any>;
    assert.equal(info['virtual-size'], size);
    assert.equal(info['backing-filename'], undefined);
    assert.equal(info['format-specific'].data.compat, '1.1');
    assert.equal(info['format-specific'].data['refcount-bits'], 16);
  });

  it('writes called without waiting for the one before land in call order', async () => {
    const clusters = [2, 3, 5, 7, 11, 13];
    const data = clusters.map(() => randomBytes(C));
    const raw = Buffer.alloc(MiB);
    clusters.forEach((c, i) => data[i].copy(raw, c * C));
    await fs.writeFile(path.join(dir, 'ref.raw'), raw);
    const ours = path.join(dir, 'ours.qcow2');
    const w = await Qcow2StreamWriter.create(ours, { size: MiB, clusters });
    await Promise.all([w.write(Buffer.concat(data.slice(0, 2))), w.write(data[2]), w.write(Buffer.concat(data.slice(3)))]);
    const done = await w.finish();
    assert.equal(done.sha256, await sha256(ours));
    await checkClean(ours, clusters.length, done.bytes);
    await runProgram('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', ours, path.join(dir, 'ref.raw')]);
  });

  it('on a qcow2 backing file, clusters in three 512 MiB regions of a 2 GiB disk: equal to the backing file patched, holes read it', async () => {
    const base = path.join(dir, 'base.qcow2');
    await runProgram('qemu-img', ['create', '-q', '-f', 'qcow2', base, String(2 * GiB)]);
    await runProgram('qemu-io', [
      '-f',
      'qcow2',
      '-c',
      'write -P 0x11 0 4M',
      '-c',
      'write -P 0x22 511M 2M',
      '-c',
      'write -P 0x33 1536M 1M',
      '-c',
      'write -P 0x44 2047M 1M',
      base,
    ]);
    // the last cluster of region 0, the first two of region 1, and region 3 (region 2 holds none)
    const clusters = [1, 40, 8191, 8192, 8193, 3 * 8192 + 5, 32767];
    const data = clusters.map(() => randomBytes(C));
    const ref = path.join(dir, 'ref.raw');
    await runProgram('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', base, ref]);
    const fh = await fs.open(ref, 'r+');
    try {
      for (const [i, c] of clusters.entries()) await fh.write(data[i], 0, C, c * C);
    } finally {
      await fh.close();
    }

    const ours = path.join(dir, 'ours.qcow2');
    const plan = { size: 2 * GiB, backing: 'base.qcow2', clusters };
    assert.equal(assertLayout(plan).dataOffset, (1 + 1 + 1 + 1 + 3) * C, 'header, L1, refcount table and block, three L2 tables');
    const done = await stream(ours, plan, data);
    assert.equal(done.sha256, await sha256(ours));
    await checkClean(ours, clusters.length, done.bytes);
    await runProgram('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', ours, ref]);
    await runProgram('qemu-io', [
      '-f',
      'qcow2',
      '-c',
      'read -P 0x11 0 64k',
      '-c',
      'read -P 0x11 128k 2432k',
      '-c',
      'read -P 0x22 511M 960k',
      '-c',
      `read -P 0x22 ${512 * MiB + 2 * C} 896k`,
      '-c',
      'read -P 0 1G 64M',
      '-c',
      'read -P 0x44 2047M 960k',
      ours,
    ]);
    const info = JSON.parse((await runProgram('qemu-img', ['info', '--output=json', ours])).stdout) as Record<string, any>;
    assert.equal(info['backing-filename'], 'base.qcow2');
    assert.equal(info['backing-filename-format'], 'qcow2');
    assert.equal(info['full-backing-filename'], base);
    assert.equal(info['virtual-size'], 2 * GiB);
  });

  it('no cluster listed: header and empty tables only, reads all from the backing file (or zeros without one)', async () => {
    const base = path.join(dir, 'base.qcow2');
    await runProgram('qemu-img', ['create', '-q', '-f', 'qcow2', base, String(64 * MiB)]);
    await runProgram('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 1M 3M', base]);
    const ours = path.join(dir, 'ours.qcow2');
    assertLayout({ size: 64 * MiB, backing: 'base.qcow2', clusters: [] });
    const done = await stream(ours, { size: 64 * MiB, backing: 'base.qcow2', clusters: [] }, []);
    assert.equal(done.bytes, 4 * C, 'header, L1 table, refcount table, refcount block');
    assert.equal(done.sha256, await sha256(ours));
    await checkClean(ours, 0, done.bytes);
    await runProgram('qemu-img', ['compare', ours, base]);

    const alone = path.join(dir, 'alone.qcow2');
    const done2 = await stream(alone, { size: 64 * MiB, clusters: [] }, []);
    await checkClean(alone, 0, done2.bytes);
    await runProgram('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0 0 64M', alone]);
  });

  it('above 4 TiB: an L1 table of two clusters, data at both ends of an 8 TiB disk', async () => {
    const size = 8192 * GiB;
    const last = size / C - 1;
    const clusters = [0, last];
    const ours = path.join(dir, 'ours.qcow2');
    assert.equal(qcow2StreamLayout({ size, clusters }).metadata.readUInt32BE(36), 16384, 'L1 entries');
    const done = await stream(ours, { size, clusters }, [Buffer.alloc(C, 0x61), Buffer.alloc(C, 0x62)]);
    assert.equal(done.bytes, (1 + 2 + 1 + 1 + 2 + 2) * C);
    assert.equal(done.sha256, await sha256(ours));
    await checkClean(ours, 2, done.bytes);
    await runProgram('qemu-io', [
      '-f',
      'qcow2',
      '-c',
      'read -P 0x61 0 64k',
      '-c',
      'read -P 0 64k 64M',
      '-c',
      `read -P 0x62 ${last * C} 64k`,
      '-c',
      `read -P 0 ${last * C - 64 * MiB} 64M`,
      ours,
    ]);
  });

  it('refcounts count every cluster once: around the point where the refcount blocks push themselves into a second block', () => {
    // no backing, a 4 GiB disk with data in every region: 1 header + 1 L1 + 1 table + blocks + 8 L2 + data
    const spread = (n: number) => Array.from({ length: n }, (_, i) => Math.floor((i * 65536) / n));
    const at = (n: number) => assertLayout({ size: 4 * GiB, clusters: spread(n) });
    assert.equal(at(32768 - 12).blocks, 1, '32768 clusters: one block exactly');
    assert.equal(at(32768 - 12).fileSize, 32768 * C);
    assert.equal(at(32768 - 11).blocks, 2, 'one cluster more needs a second block, which counts itself');
    assert.equal(at(32768 - 11).fileSize, 32770 * C);
    assert.equal(at(40000).blocks, 2);
    assert.equal(at(65536).blocks, 3, 'the whole disk');
  });

  it('more than one refcount block, written for real (2 GiB): check clean, data where the L2 tables say', async function () {
    this.timeout(120_000);
    // every other cluster of a 4 GiB disk: 32768 data clusters, 32781 in the file
    const clusters = Array.from({ length: 32768 }, (_, i) => 2 * i);
    const plan = { size: 4 * GiB, clusters };
    assert.equal(assertLayout(plan).blocks, 2);
    const ours = path.join(dir, 'ours.qcow2');
    const w = await Qcow2StreamWriter.create(ours, plan);
    // each cluster filled with one byte from its guest index: 16 clusters a write
    const buf = Buffer.alloc(16 * C);
    const hash = createHash('sha256').update(qcow2StreamLayout(plan).metadata);
    for (let i = 0; i < clusters.length; i += 16) {
      for (let j = 0; j < 16; j++) buf.fill(1 + (clusters[i + j] % 251), j * C, (j + 1) * C);
      hash.update(buf);
      await w.write(buf);
    }
    const done = await w.finish();
    assert.equal(done.bytes, 32781 * C);
    assert.equal(done.sha256, hash.digest('hex'), 'the hash of the bytes handed to it, metadata first');
    await checkClean(ours, clusters.length, done.bytes);
    const spots = [0, 1, 2, 8190, 8191, 8192, 16384, 40000, 65534, 65535];
    await runProgram('qemu-io', [
      '-f',
      'qcow2',
      ...spots.flatMap((c) => ['-c', `read -P ${c % 2 ? 0 : 1 + (c % 251)} ${c * C} 64k`]),
      ours,
    ]);
  });

  it('a full file system: the write rejects naming the file and ENOSPC, finish rejects, abort does not throw', async function () {
    const mnt = path.join(dir, 'small');
    await fs.mkdir(mnt);
    try {
      await runProgram('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', mnt]);
    } catch {
      this.skip(); // not root, or no mount here
    }
    try {
      const file = path.join(mnt, 'ours.qcow2');
      const w = await Qcow2StreamWriter.create(file, { size: 16 * MiB, clusters: Array.from({ length: 64 }, (_, i) => i) });
      const buf = Buffer.alloc(16 * C, 0x77);
      let err: (Error & { code?: string }) | undefined;
      for (let i = 0; i < 4 && !err; i++) {
        try {
          await w.write(buf);
        } catch (e) {
          err = e as Error;
        }
      }
      assert.ok(err, 'a write rejected');
      assert.match(err.message, /ENOSPC/);
      assert.ok(err.message.includes(file), err.message);
      assert.equal(err.code, 'ENOSPC');
      await assert.rejects(w.write(buf), /ENOSPC|more than the plan/);
      await assert.rejects(w.finish(), /ENOSPC/);
      await w.abort();
      await w.abort();
    } finally {
      await runProgram('umount', [mnt]);
    }
  });

  it('bad plans are refused naming the problem', () => {
    const bad: [Qcow2StreamPlan, RegExp][] = [
      [{ size: 0, clusters: [] }, /virtual size 0/],
      [{ size: 1000, clusters: [] }, /virtual size 1000 .*multiple of 512/],
      [{ size: NaN, clusters: [] }, /virtual size NaN/],
      [{ size: MiB, clusters: [3, 2] }, /not ascending: 2 after 3/],
      [{ size: MiB, clusters: [1, 1] }, /cluster 1 is listed twice/],
      [{ size: MiB, clusters: [16] }, /cluster 16 .*out of range: the disk has 16 clusters/],
      [{ size: MiB + 512, clusters: [17] }, /cluster 17 .*out of range: the disk has 17 clusters/],
      [{ size: MiB, clusters: [-1] }, /cluster -1 .*not a non-negative integer/],
      [{ size: MiB, clusters: [1.5] }, /cluster 1.5 /],
      [{ size: MiB, clusters: [], backing: '' }, /backing file string is empty/],
      [{ size: MiB, clusters: [], backing: 'x'.repeat(1024) }, /1024 bytes, over 1023/],
      [{ size: MiB, clusters: [], backing: 'a\0b' }, /NUL/],
      [{ size: 4 * 1024 ** 5, clusters: [] }, /L1 table of .* above QEMU's 32 MiB/],
    ];
    for (const [plan, why] of bad) assert.throws(() => qcow2StreamLayout(plan), why);
    assert.ok(qcow2StreamLayout({ size: MiB + 512, clusters: [16], backing: 'é'.repeat(511) }));
  });

  it('refuses more bytes than planned, a partial cluster, missing clusters at finish, a write after finish', async () => {
    const ours = path.join(dir, 'ours.qcow2');
    const w = await Qcow2StreamWriter.create(ours, { size: MiB, clusters: [0, 1] });
    await assert.rejects(w.write(Buffer.alloc(3 * C)), /a write up to 196608 data bytes, more than the plan's 2 clusters/);
    await assert.rejects(w.write(Buffer.alloc(C - 1)), /not whole 64 KiB clusters/);
    await w.write(Buffer.alloc(C, 1));
    await assert.rejects(w.write(Buffer.alloc(2 * C)), /more than the plan's 2 clusters/);
    assert.equal(w.written, C);
    await assert.rejects(w.finish(), /1 of the plan's 2 data clusters not written/);
    await assert.rejects(w.write(Buffer.alloc(C)), /after finish\(\) or abort\(\)/);
    await w.abort(); // already closed by finish: nothing to do, no throw

    const w2 = await Qcow2StreamWriter.create(ours, { size: MiB, clusters: [0] });
    await w2.write(Buffer.alloc(C, 2));
    await w2.finish();
    await assert.rejects(w2.finish(), /after finish\(\) or abort\(\)/);
    await assert.rejects(w2.write(Buffer.alloc(C)), /after finish\(\) or abort\(\)/);

    // abort with writes queued: they reject, the file is closed once, nothing throws
    const w3 = await Qcow2StreamWriter.create(ours, { size: MiB, clusters: [0, 1, 2] });
    const queued = [w3.write(Buffer.alloc(C)), w3.write(Buffer.alloc(C)), w3.write(Buffer.alloc(C))];
    await Promise.all([w3.abort(), w3.abort()]);
    const settled = await Promise.allSettled(queued);
    assert.ok(settled.some((s) => s.status === 'rejected'));
    await assert.rejects(w3.finish(), /after finish\(\) or abort\(\)/);
  });

  it('never writes through a link planted under its name', async () => {
    const target = path.join(dir, 'victim');
    await fs.writeFile(target, 'keep me');
    await fs.symlink(target, path.join(dir, 'ours.qcow2'));
    await assert.rejects(Qcow2StreamWriter.create(path.join(dir, 'ours.qcow2'), { size: MiB, clusters: [] }), /symbolic link/);
    assert.equal(await fs.readFile(target, 'utf8'), 'keep me');
  });
});
