// The in-process pull of a full (src/providers/qemu/pull-full.ts over pull-stream.ts) and its
// read-back check made as it is written (readback.ts over src/repository/qcow2-read.ts) against a
// real NBD server: qemu-nbd exporting a qcow2 image read-only, its `base:allocation` context saying
// what reads as zeros, the way QEMU exports a view. The copy must read as the source (qemu-img
// compare), pass qemu-img check, hash as its file, and hold no cluster where the source reads zeros;
// the check must pass it, and find every kind of damage in a file it is run on. (The same path
// against a VM's QEMU: the integration and fault suites.)
import * as assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pullFullDisk } from '../../../src/providers/qemu/pull-full';
import type { ViewServer } from '../../../src/providers/qemu/pull';
import type { ViewDisk } from '../../../src/providers/qemu/view';
import { ReadBack, ReadBackMismatch } from '../../../src/providers/qemu/readback';
import { streamRefusal } from '../../../src/providers/qemu/pull-stream';
import { NbdError } from '../../../src/nbd/client';
import { Qcow2Reader } from '../../../src/repository/qcow2-read';
import { runProgram } from '../../../src/util/run';
import { qemuIo, serve } from './qemu-nbd';

const KiB = 1024;
const MiB = 1 << 20;

describe('pull of a full in-process: base:allocation, reads, a plain qcow2, the read-back check', function () {
  this.timeout(60_000);
  let dir: string;
  let server: ChildProcess | undefined;
  let sock: string;
  // a size that is not a multiple of the 64 KiB cluster: the last cluster is partial
  const SIZE = 40 * MiB + 512;
  const source = () => path.join(dir, 'source.qcow2');
  const disk = { disk: 'vda', index: 0, virtualSize: SIZE } as ViewDisk;
  const viewServer = (chained = false): ViewServer => ({
    socket: sock,
    exports: new Map([['vda', { uri: '', socket: sock, name: 'd0', chained }]]),
  });
  let pulled: Exclude<Awaited<ReturnType<typeof pullFullDisk>>, string>;
  const copy = () => path.join(dir, 'full.qcow2');

  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmb-pullfull-'));
    sock = path.join(dir, 's.sock');
    await runProgram('qemu-img', ['create', '-q', '-f', 'qcow2', source(), String(SIZE)]);
    await qemuIo(
      source(),
      'write -P 0xaa 0 3M', // more than one read (1 MiB)
      'write -P 0x11 5M 64k', // one cluster alone
      'write -P 0x22 7M 100k', // a run ending inside a cluster
      'write -z 10M 2M', // zeros written: reads as zeros, not copied
      'write -P 0x33 39M 1M', // up to the last, partial cluster
      'write -P 0x44 40M 512',
    );
    server = await serve(source(), sock);
    const progress: [number, number][] = [];
    const r = await pullFullDisk(viewServer(), disk, {
      dest: copy(),
      check: true,
      onProgress: (done, total) => progress.push([done, total]),
    });
    assert.ok(typeof r !== 'string', `pulled, not refused: ${String(r)}`);
    pulled = r;
    const data = 3 * MiB + 64 * KiB + 128 * KiB + 1 * MiB + 512;
    assert.deepEqual(progress[progress.length - 1], [data, data]);
  });
  after(async () => {
    server?.kill();
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('writes a plain image that reads as the source, passes qemu-img check, holds only the data, and hashes as its file', async () => {
    await runProgram('qemu-img', ['check', '-q', copy()]);
    await runProgram('qemu-img', ['compare', '-q', '-f', 'qcow2', '-F', 'qcow2', source(), copy()]);
    const info = JSON.parse((await runProgram('qemu-img', ['info', '--output=json', copy()])).stdout);
    assert.equal(info['virtual-size'], SIZE);
    assert.equal(info['backing-filename'], undefined);
    const map = JSON.parse((await runProgram('qemu-img', ['map', '--output=json', copy()])).stdout) as { length: number; data: boolean }[];
    // 3 MiB + 1 + 2 + 16 + 1 clusters hold data; the written zeros and the rest are holes
    assert.equal(
      map.filter((m) => m.data).reduce((n, m) => n + m.length, 0),
      3 * MiB + 64 * KiB + 128 * KiB + 1 * MiB + 512,
    );
    assert.equal(pulled.checked, true);
    const st = await fs.stat(copy(), { bigint: true });
    assert.equal(pulled.bytes, Number(st.size));
    assert.deepEqual(pulled.writtenAs, { size: st.size, mtimeNs: st.mtimeNs, ino: st.ino });
    assert.equal(
      pulled.sha256,
      createHash('sha256')
        .update(await fs.readFile(copy()))
        .digest('hex'),
    );
  });

  /**
   * The check as the pull runs it, on `file`: every data run of the good copy (what was read from
   * the view) compared once written, then the layout once closed.
   */
  const checkFile = async (file: string, size = SIZE) => {
    const rb = await ReadBack.open(file, 'vda', size, (await fs.stat(file)).size, 512 * KiB);
    const good = await Qcow2Reader.open(copy());
    const clusters: number[] = [];
    try {
      for (const x of await good.extents(0, SIZE)) {
        if (x.zero) continue;
        for (let c = Math.floor(x.guest / 65536); c <= Math.floor((x.guest + x.length - 1) / 65536); c++) clusters.push(c);
        for (let at = x.guest; at < x.guest + x.length; at += 512 * KiB) {
          const n = Math.min(512 * KiB, x.guest + x.length - at);
          await rb.check(at, n, Buffer.from(await good.read(at, n)));
        }
      }
      await rb.finish(clusters);
    } finally {
      await rb.close();
      await good.close();
    }
  };

  it('the read-back check passes the copy as written', async () => {
    await checkFile(copy());
  });

  it('the read-back check finds a changed byte, data where the disk read zeros, a cluster gone, another size', async () => {
    const damaged = async (name: string, ...cmds: string[]) => {
      const f = path.join(dir, name);
      await fs.copyFile(copy(), f);
      await qemuIo(f, ...cmds);
      return f;
    };
    await assert.rejects(checkFile(await damaged('byte.qcow2', 'write -P 0x01 7M 1')), /the 64 KiB at byte 7340032 differ/);
    await assert.rejects(
      checkFile(await damaged('extra.qcow2', 'write -P 0x01 20M 4k')),
      /data at byte 20971520, where the disk read zeros/,
    );
    await assert.rejects(checkFile(await damaged('gone.qcow2', 'discard 5M 64k')), /the 64 KiB at byte 5242880 differ/);
    await assert.rejects(checkFile(copy(), SIZE + 512), new RegExp(`its size is ${SIZE} bytes, the disk's ${SIZE + 512}`));
    // the bytes themselves, behind the format's back: a flipped byte in the last whole data cluster of the file
    const raw = path.join(dir, 'raw-flip.qcow2');
    await fs.copyFile(copy(), raw);
    const fh = await fs.open(raw, 'r+');
    const st = await fh.stat();
    await fh.write(Buffer.from([0x55]), 0, 1, st.size - 65536 - 4096);
    await fh.close();
    await assert.rejects(checkFile(raw), /differ from what was read from the view/);
    await assert.rejects(checkFile(path.join(dir, 'none.qcow2')), /ENOENT/);
  });

  it('a check that fails fails every later one; a layout changed after the checks is found at the end', async () => {
    const f = path.join(dir, 'later.qcow2');
    await fs.copyFile(copy(), f);
    const good = await Qcow2Reader.open(copy());
    const rb = await ReadBack.open(f, 'vda', SIZE, (await fs.stat(f)).size, 512 * KiB);
    try {
      await assert.rejects(rb.check(0, 65536, Buffer.alloc(65536, 0x01)), /the 64 KiB at byte 0 differ/);
      await assert.rejects(rb.check(0, 65536, Buffer.from(await good.read(0, 65536))), /the 64 KiB at byte 0 differ/);
    } finally {
      await rb.close();
    }
    // every run checked, then the file's L2 table rewritten behind the checks: one cluster moved to a hole
    const g = path.join(dir, 'moved.qcow2');
    await fs.copyFile(copy(), g);
    const rb2 = await ReadBack.open(g, 'vda', SIZE, (await fs.stat(g)).size, 512 * KiB);
    try {
      await rb2.check(5 * MiB, 65536, Buffer.from(await good.read(5 * MiB, 65536)));
      await qemuIo(g, 'discard 5M 64k');
      await assert.rejects(rb2.finish([80]), /layout between bytes 0 and \d+ changed after it was checked/);
    } finally {
      await rb2.close();
      await good.close();
    }
  });

  it('a copy moved away while it was checked is not passed: the last look opens it by its name', async () => {
    const f = path.join(dir, 'moving.qcow2');
    await fs.copyFile(copy(), f);
    const good = await Qcow2Reader.open(copy());
    const rb = await ReadBack.open(f, 'vda', SIZE, (await fs.stat(f)).size, 512 * KiB);
    try {
      // the checks read through the descriptor opened first: they pass on the moved file
      await rb.check(0, 65536, Buffer.from(await good.read(0, 65536)));
      await fs.rename(f, `${f}.moved`);
      await assert.rejects(rb.finish([0]), /moving\.qcow2 could not be read back: ENOENT/);
    } finally {
      await rb.close();
      await good.close();
    }
  });

  it('a failed read-back check fails the copy as it is; a read QEMU refused is copied another way', () => {
    const wrong = new ReadBackMismatch('verification failed: x does not hold what disk vda held');
    assert.throws(
      () => streamRefusal(wrong, disk, 'copying disk vda failed'),
      (e) => e === wrong,
    );
    assert.match(
      streamRefusal(
        new NbdError('NBD read of 65536 bytes at 0 failed (EINVAL: reading from file failed)'),
        disk,
        'copying disk vda failed',
      ),
      /^view-read-failed: /,
    );
    assert.throws(
      () => streamRefusal(new Error('socket closed'), disk, 'copying disk vda failed'),
      /copying disk vda failed: socket closed/,
    );
  });

  it('a 1 TiB disk holding 2 MiB: pulled and checked without holding the thread (a region without a table is one run)', async () => {
    const big = path.join(dir, 'big.qcow2');
    const bigSock = path.join(dir, 'big.sock');
    await runProgram('qemu-img', ['create', '-q', '-f', 'qcow2', big, '1T']);
    await qemuIo(big, 'write -P 0x11 0 1M', 'write -P 0x22 700G 1M');
    const bigServer = await serve(big, bigSock);
    try {
      const view: ViewServer = { socket: bigSock, exports: new Map([['vda', { uri: '', socket: bigSock, name: 'd0', chained: false }]]) };
      const out = path.join(dir, 'big-copy.qcow2');
      // the longest the event loop waited while the pull and its check ran
      let longest = 0;
      let last = performance.now();
      const tick = setInterval(() => {
        longest = Math.max(longest, performance.now() - last);
        last = performance.now();
      }, 5);
      try {
        const r = await pullFullDisk(view, { ...disk, virtualSize: 2 ** 40 }, { dest: out, check: true });
        assert.ok(typeof r !== 'string' && r.checked);
      } finally {
        clearInterval(tick);
      }
      assert.ok(longest < 500, `the event loop waited ${Math.round(longest)} ms`);
      await runProgram('qemu-img', ['compare', '-q', '-f', 'qcow2', '-F', 'qcow2', big, out]);
    } finally {
      bigServer.kill();
    }
  });

  it('a disk with a backing chain, a busy NBD server: refused before anything is written (the caller copies it another way)', async () => {
    const dest = path.join(dir, 'refused.qcow2');
    assert.equal(await pullFullDisk(viewServer(true), disk, { dest }), 'backing-chain');
    assert.equal(await pullFullDisk('nbd-server-busy', disk, { dest }), 'nbd-server-busy');
    assert.equal(existsSync(dest), false);
  });

  it('a server that stops answering fails the pull within the bound; an abort ends it with its reason', async () => {
    const p = pullFullDisk(viewServer(), disk, { dest: path.join(dir, 'stopped.qcow2'), replyTimeoutMs: 500 });
    await new Promise((r) => setTimeout(r, 5));
    server!.kill('SIGSTOP');
    const t0 = Date.now();
    try {
      await assert.rejects(p, /did not answer|no handshake|closed/);
      assert.ok(Date.now() - t0 < 12_000, `failed after ${Date.now() - t0} ms`);
    } finally {
      server!.kill('SIGCONT');
    }
    const stop = new AbortController();
    const q = pullFullDisk(viewServer(), disk, { dest: path.join(dir, 'aborted.qcow2'), signal: stop.signal });
    stop.abort(new Error('set aborted'));
    await assert.rejects(q, /set aborted/);
  });
});
