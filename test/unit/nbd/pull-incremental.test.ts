// The in-process pull of an incremental (src/providers/qemu/pull-incremental.ts over
// src/nbd/client.ts and src/repository/qcow2-stream.ts) against a real NBD server: qemu-nbd
// exporting a qcow2 image read-only with a disabled persistent bitmap as its
// `qemu:dirty-bitmap:` context, the way QEMU exports a view with the parent's bitmap. The new
// image, on the parent as its backing file, must read as the source (qemu-img compare), pass
// qemu-img check, and hash as its file; a server that stops answering or an abort must end the
// pull, not hold it. (The same path against a VM's QEMU: test/integration/incremental.test.ts.)
import * as assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { NbdClient, NbdError } from '../../../src/nbd/client';
import { dirtyExtents, pullIncremental } from '../../../src/providers/qemu/pull-incremental';
import { clustersOf, readsOf } from '../../../src/providers/qemu/pull-stream';
import { runProgram } from '../../../src/util/run';
import { qemuIo, serve } from './qemu-nbd';

const KiB = 1024;
const MiB = 1 << 20;

describe('pull of an incremental in-process: dirty bitmap, reads, a qcow2 on the parent', function () {
  this.timeout(60_000);
  let dir: string;
  let server: ChildProcess | undefined;
  let sock: string;
  // a size that is not a multiple of the 64 KiB cluster: the last cluster is partial
  const SIZE = 48 * MiB + 512;
  const parent = () => path.join(dir, 'parent.qcow2');
  const source = () => path.join(dir, 'source.qcow2');
  /** the pull of bitmap b0 of export d0 into `name`, on parent.qcow2 */
  const pull = (name: string, more: Partial<Parameters<typeof pullIncremental>[0]> = {}) =>
    pullIncremental({
      socket: sock,
      exportName: 'd0',
      bitmap: 'b0',
      size: SIZE,
      dest: path.join(dir, name),
      backing: 'parent.qcow2',
      ...more,
    });

  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmb-pullinc-'));
    sock = path.join(dir, 's.sock');
    await runProgram('qemu-img', ['create', '-q', '-f', 'qcow2', parent(), String(SIZE)]);
    await qemuIo(parent(), 'write -P 0xaa 0 8M', 'write -P 0xbb 20M 4M', 'write -P 0xcc 48M 512');
    // the source: the parent's bytes, then a bitmap, then the writes since (what the view holds)
    await runProgram('qemu-img', ['convert', '-f', 'qcow2', '-O', 'qcow2', parent(), source()]);
    await runProgram('qemu-img', ['bitmap', '--add', '-g', '64K', source(), 'b0']);
    await qemuIo(
      source(),
      'write -P 0x11 1M 64k', // one cluster over data
      'write -P 0x22 3M 200k', // a run ending inside a cluster
      'write -P 0x33 12M 9M', // more than one read (4 MiB) of consecutive clusters
      'write -z 21M 1M', // zeros over the parent's data: must read as zeros, not as the parent
      'write -P 0x44 48M 512', // the last, partial cluster
    );
    await runProgram('qemu-img', ['bitmap', '--disable', source(), 'b0']);
    server = await serve(source(), sock, 'b0');
  });
  after(async () => {
    server?.kill('SIGCONT');
    server?.kill();
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('reads the dirty bitmap as extents: every write since, in 64 KiB clusters, nothing else', async () => {
    const c = await NbdClient.connect({ socket: sock, exportName: 'd0', metaContext: 'qemu:dirty-bitmap:b0' });
    try {
      assert.equal(c.size, SIZE);
      const dirty = await dirtyExtents(c, SIZE);
      assert.deepEqual(
        dirty.map((e) => [e.offset, e.length]),
        [
          [1 * MiB, 64 * KiB],
          [3 * MiB, 256 * KiB],
          [12 * MiB, 10 * MiB], // 12M + 9M and the zeros at 21M: one run
          [48 * MiB, 512],
        ],
      );
      const clusters = clustersOf(dirty);
      assert.equal(clusters.length, 1 + 4 + 144 + 16 + 1);
      assert.deepEqual(clusters.slice(0, 3), [16, 48, 49]);
      // 9 MiB + 1 MiB consecutive (12M..22M) cut into reads of at most 4 MiB; the last clipped at the end
      assert.deepEqual(
        readsOf(clusters, SIZE).map((r) => [r.offset / MiB, r.length]),
        [
          [1, 64 * KiB],
          [3, 256 * KiB],
          [12, 4 * MiB],
          [16, 4 * MiB],
          [20, 2 * MiB],
          [48, 512],
        ],
      );
    } finally {
      await c.close();
    }
  });

  it('writes an image on the parent that reads as the source, passes qemu-img check, and hashes as its file', async () => {
    const dest = path.join(dir, 'inc.qcow2');
    const progress: [number, number][] = [];
    const r = await pull('inc.qcow2', { onProgress: (done, total) => progress.push([done, total]) });
    const changed = 64 * KiB + 256 * KiB + 9 * MiB + 1 * MiB + 512;
    assert.equal(r.bytesChanged, changed);
    assert.equal(r.bytesRead, changed); // the bitmap's granularity is the cluster's: 3M + 200k is marked as 256 KiB
    assert.equal(r.bytes, (await fs.stat(dest)).size);
    assert.equal(
      r.sha256,
      createHash('sha256')
        .update(await fs.readFile(dest))
        .digest('hex'),
    );
    assert.deepEqual(progress[progress.length - 1], [changed, changed]);
    await runProgram('qemu-img', ['check', '-q', dest]);
    await runProgram('qemu-img', ['compare', '-q', dest, source()]);
    const info = JSON.parse((await runProgram('qemu-img', ['info', '--output=json', dest])).stdout);
    assert.equal(info['backing-filename'], 'parent.qcow2');
    assert.equal(info['virtual-size'], SIZE);
    // only the changed clusters are in the new file (and its metadata)
    assert.ok(r.bytes < changed + 1 * MiB, `${r.bytes} bytes for ${changed} changed`);
  });

  it('a context the export does not offer is refused, naming it', async () => {
    await assert.rejects(
      NbdClient.connect({ socket: sock, exportName: 'd0', metaContext: 'qemu:dirty-bitmap:nope' }),
      (err: Error) => err instanceof NbdError && /qemu:dirty-bitmap:nope/.test(err.message),
    );
  });

  it('a server that stops answering fails the pull within the bound; an abort ends it with its reason', async () => {
    const c = pull('stopped.qcow2', { replyTimeoutMs: 500 });
    // stopped before it answers anything: the handshake has its own bound; so stop it after the connect
    await new Promise((r) => setTimeout(r, 5));
    server!.kill('SIGSTOP');
    const t0 = Date.now();
    try {
      await assert.rejects(c, /did not answer|no handshake|closed/);
      assert.ok(Date.now() - t0 < 12_000, `failed after ${Date.now() - t0} ms`);
    } finally {
      server!.kill('SIGCONT');
    }
    const stop = new AbortController();
    const p = pull('stopped.qcow2', { signal: stop.signal });
    stop.abort(new Error('set aborted'));
    await assert.rejects(p, /set aborted/);
  });
});
