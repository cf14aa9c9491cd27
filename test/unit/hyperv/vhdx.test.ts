// The VHDX reader and the qcow2 writer against another implementation: VHDX files made and
// written by qemu-img / qemu-io (QEMU's VHDX driver), read by our reader, written as qcow2 links,
// and compared by qemu-img with what QEMU reads from the VHDX. Needs qemu-img, qemu-io, nbdkit
// and nbdcopy (scripts/setup.sh); skipped, saying why, without them.
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { alignRanges, copyRangesToQcow2 } from '../../../src/providers/hyperv/disk-copy';
import { HyperVError } from '../../../src/providers/hyperv/errors';
import { openLocalFile } from '../../../src/providers/hyperv/runner';
import { crc32c, normaliseRanges, VhdxReader } from '../../../src/providers/hyperv/vhdx';

const MiB = 1 << 20;
const tools = ['qemu-img', 'qemu-io', 'nbdkit', 'nbdcopy', 'qemu-nbd'];
const missing = tools.filter((t) => {
  try {
    execFileSync('sh', ['-c', `command -v ${t}`], { stdio: 'ignore' });
    return false;
  } catch {
    return true;
  }
});

const img = (...args: string[]) => execFileSync('qemu-img', args, { stdio: 'pipe' }).toString();
const io = (file: string, fmt: string, ...cmds: string[]) =>
  execFileSync('qemu-io', ['-f', fmt, ...cmds.flatMap((c) => ['-c', c]), file], { stdio: 'pipe' });
const same = (a: string, fa: string, b: string, fb: string) => {
  try {
    execFileSync('qemu-img', ['compare', '-f', fa, '-F', fb, a, b], { stdio: 'pipe' });
    return true;
  } catch {
    return false;
  }
};

describe('hyperv: VHDX reader and qcow2 links (against qemu-img)', function () {
  this.timeout(60_000);
  let dir: string;
  before(function () {
    if (missing.length) this.skip();
  });
  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmb-vhdx-'));
  });
  afterEach(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  const open = async (file: string) => VhdxReader.open(await openLocalFile(file), file);

  it('crc32c is the Castagnoli CRC (RFC 3720 test vector)', () => {
    assert.equal(crc32c(Buffer.from('123456789')), 0xe3069283);
  });

  for (const [label, opts] of [
    ['dynamic, 1 MiB blocks', 'subformat=dynamic,block_size=1M'],
    ['dynamic, 32 MiB blocks (the Hyper-V default)', 'subformat=dynamic,block_size=32M'],
    ['fixed (every block present, as Hyper-V makes it)', 'subformat=fixed,block_size=8M,block_state_zero=off'],
  ] as const) {
    it(`${label}: a full reads only allocated blocks and equals what QEMU reads`, async () => {
      const vhdx = path.join(dir, 'disk.vhdx');
      img('create', '-q', '-f', 'vhdx', '-o', opts, vhdx, '72M');
      io(vhdx, 'vhdx', 'write -P 0x11 0 4k', 'write -P 0x22 5M 3M', 'write -P 0x33 71M 1M', 'write -z 6M 64k');
      const reader = await open(vhdx);
      assert.equal(reader.info.virtualSize, 72 * MiB);
      const allocated = reader.allocatedRanges();
      const bytes = allocated.reduce((n, r) => n + r.length, 0);
      if (opts.includes('fixed')) assert.equal(bytes, 72 * MiB);
      else assert.ok(bytes < 72 * MiB, `only allocated blocks: ${bytes}`);
      const q = path.join(dir, 'full.qcow2');
      const { bytesRead } = await copyRangesToQcow2(reader, allocated, q, {});
      await reader.close();
      assert.equal(bytesRead, bytes);
      assert.ok(same(vhdx, 'vhdx', q, 'qcow2'), 'qemu-img compare: the qcow2 holds what the VHDX holds');
      assert.equal(JSON.parse(img('info', '--output=json', q))['virtual-size'], 72 * MiB);
      // compressed (the copy node's Compress option): the same content
      const reader2 = await open(vhdx);
      await copyRangesToQcow2(reader2, reader2.allocatedRanges(), path.join(dir, 'full-c.qcow2'), { compress: true });
      await reader2.close();
      assert.ok(same(vhdx, 'vhdx', path.join(dir, 'full-c.qcow2'), 'qcow2'));
      await fs.rm(path.join(dir, 'full-c.qcow2'));
      assert.deepEqual((await fs.readdir(dir)).sort(), ['disk.vhdx', 'full.qcow2'], 'no temporary file is left beside the copy');
    });
  }

  it('an incremental link holds only the changed ranges, over a relative backing file, and reads as the new disk', async () => {
    const vhdx = path.join(dir, 'disk.vhdx');
    img('create', '-q', '-f', 'vhdx', '-o', 'subformat=dynamic,block_size=1M', vhdx, '16M');
    io(vhdx, 'vhdx', 'write -P 0x41 0 2M', 'write -P 0x42 8M 1M');
    await fs.mkdir(path.join(dir, 'b1'));
    await fs.mkdir(path.join(dir, 'b2'));
    let reader = await open(vhdx);
    await copyRangesToQcow2(reader, reader.allocatedRanges(), path.join(dir, 'b1', 'disk.qcow2'), {});
    await reader.close();
    // the guest writes: new data, and a range that becomes zeros (must not read through to 0x41)
    io(vhdx, 'vhdx', 'write -P 0x55 12M 512k', 'write -z 1M 64k', 'write -P 0x66 8M 4k');
    const changed = normaliseRanges(
      [
        { offset: 12 * MiB, length: 512 << 10 },
        { offset: 1 * MiB, length: 64 << 10 },
        { offset: 8 * MiB, length: 4096 },
      ],
      16 * MiB,
      'test',
    );
    reader = await open(vhdx);
    const top = path.join(dir, 'b2', 'disk.qcow2');
    const { bytesRead } = await copyRangesToQcow2(reader, changed, top, { backing: '../b1/disk.qcow2' });
    await reader.close();
    // the 4 KiB change is read as its whole 64 KiB request, from the same image
    assert.equal(bytesRead, (512 << 10) + (64 << 10) + (64 << 10));
    const info = JSON.parse(img('info', '--output=json', top));
    assert.equal(info['backing-filename'], '../b1/disk.qcow2');
    assert.ok(info['actual-size'] < 4 * MiB, `the link holds the changes only (${info['actual-size']} bytes)`);
    assert.ok(same(vhdx, 'vhdx', top, 'qcow2'), 'the chain reads as the VHDX now does');
    // and compressed, the same content
    reader = await open(vhdx);
    const ctop = path.join(dir, 'b2', 'disk-c.qcow2');
    await copyRangesToQcow2(reader, changed, ctop, { backing: '../b1/disk.qcow2', compress: true });
    await reader.close();
    assert.equal(JSON.parse(img('info', '--output=json', ctop))['backing-filename'], '../b1/disk.qcow2');
    assert.ok(same(vhdx, 'vhdx', ctop, 'qcow2'), 'the compressed link reads the same');
    const map = JSON.parse(img('map', '--output=json', ctop)) as { start: number; length: number; depth: number; data: boolean }[];
    assert.ok(
      map.some((m) => m.depth === 1 && m.data),
      'unchanged areas read through the backing file (not copied into the link)',
    );
  });

  it('refuses a VHDX whose log is not empty, a differencing VHDX, a bad header checksum, and a VHD', async () => {
    const vhdx = path.join(dir, 'disk.vhdx');
    img('create', '-q', '-f', 'vhdx', vhdx, '8M');
    const buf = await fs.readFile(vhdx);
    // header 1 at 64 KiB: give it a LogGuid and the highest sequence number, with a correct CRC
    const withLog = Buffer.from(buf);
    const h = withLog.subarray(64 << 10, (64 << 10) + 4096);
    h.writeBigUInt64LE(h.readBigUInt64LE(8) + 10n, 8);
    h.fill(0x5a, 48, 64);
    h.writeUInt32LE(0, 4);
    h.writeUInt32LE(crc32c(h), 4);
    await fs.writeFile(path.join(dir, 'log.vhdx'), withLog);
    await assert.rejects(
      open(path.join(dir, 'log.vhdx')),
      (e: HyperVError) => e.code === 'inconsistent' && /log is not empty/.test(e.message),
    );
    // both headers damaged
    const broken = Buffer.from(buf);
    broken[(64 << 10) + 20] ^= 0xff;
    broken[(128 << 10) + 20] ^= 0xff;
    await fs.writeFile(path.join(dir, 'bad.vhdx'), broken);
    await assert.rejects(open(path.join(dir, 'bad.vhdx')), /neither header is valid/);
    // a differencing VHDX (qemu-img cannot make one: the HasParent bit of the file parameters is set
    // by hand; the metadata region has no checksum)
    const diff = Buffer.from(buf);
    const meta = diff.indexOf('metadata', 0, 'latin1');
    const params = Buffer.from('3767a1ca36fa434db3b633f0aa44e76b', 'hex'); // CAA16737-FA36-4D43-... as stored
    for (let e = meta + 32; e < meta + 32 + 32 * diff.readUInt16LE(meta + 10); e += 32) {
      if (diff.subarray(e, e + 16).equals(params)) diff[meta + diff.readUInt32LE(e + 16) + 4] |= 2;
    }
    await fs.writeFile(path.join(dir, 'diff.vhdx'), diff);
    await assert.rejects(open(path.join(dir, 'diff.vhdx')), /differencing disk/);
    // a VHD is not a VHDX
    img('create', '-q', '-f', 'vpc', path.join(dir, 'old.vhd'), '8M');
    await assert.rejects(open(path.join(dir, 'old.vhd')), /no "vhdxfile" signature/);
  });

  it('the header identity changes when QEMU writes the file (what the end-of-copy check relies on)', async () => {
    const vhdx = path.join(dir, 'disk.vhdx');
    img('create', '-q', '-f', 'vhdx', vhdx, '8M');
    const r1 = await open(vhdx);
    const before = await r1.identityNow();
    io(vhdx, 'vhdx', 'write -P 0x11 0 4k');
    const after = await r1.identityNow();
    await r1.close();
    assert.notDeepEqual(after, before);
  });

  it('alignRanges widens ranges to whole requests, merged and clipped to the disk', () => {
    assert.deepEqual(
      alignRanges(
        [
          { offset: 70000, length: 10 },
          { offset: 4096, length: 4096 },
          { offset: MiB - 5, length: 5 },
        ],
        65536,
        MiB,
      ),
      [
        { offset: 0, length: 131072 },
        { offset: MiB - 65536, length: 65536 },
      ],
    );
  });

  it('normaliseRanges merges neighbours and refuses ranges outside the disk or overlapping', () => {
    assert.deepEqual(
      normaliseRanges(
        [
          { offset: 4096, length: 4096 },
          { offset: 0, length: 4096 },
          { offset: 10000, length: 0 },
        ],
        MiB,
        'x',
      ),
      [{ offset: 0, length: 8192 }],
    );
    assert.throws(() => normaliseRanges([{ offset: MiB - 10, length: 20 }], MiB, 'x'), /outside/);
    assert.throws(
      () =>
        normaliseRanges(
          [
            { offset: 0, length: 100 },
            { offset: 50, length: 100 },
          ],
          MiB,
          'x',
        ),
      /overlap/,
    );
  });
});
