// node dist/bench/copy-path.js [--rounds=N] [--disk-mib=N] [--data-mib=N]
//
// Where the product's copy path (src/providers/qemu/disk-copy.ts: QEMU's backup job writing through
// NBD to a qemu-nbd process) loses time, without any of the product's code: one QEMU process (a PC
// with no OS, the disk on a virtio device) and the same backup job, full and incremental (26 x 1 MiB
// rewritten, sync=bitmap), into a local qcow2 the VM's QEMU opens itself, and through qemu-nbd with
// the product's flags (--cache=writeback --aio=threads) and with others. Prints the job's ms and
// job + close (until qemu-nbd has flushed and exited) per variant and round.
import { spawn } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { waitForSocket } from '../test/support/bare-vms';
import { makeDataImage } from './images';
import { RawQmp } from './qmp-raw';
import { endProcess, log, median, MiB, rmrf } from './util';

const arg = (name: string, dflt: number) => Number(process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1] ?? dflt);

async function main(): Promise<void> {
  const rounds = arg('rounds', 3);
  const diskMiB = arg('disk-mib', 1024);
  const dataMiB = arg('data-mib', 256);
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmb-copy-path-'));
  const disk = path.join(dir, 'disk.qcow2');
  const base = path.join(dir, 'base.qcow2');
  await makeDataImage(disk, { virtualMiB: diskMiB, dataMiB, layout: 'spread' });
  const size = String(diskMiB * MiB);
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', base, size]);
  const sock = path.join(dir, 'qmp.sock');
  const qemu = spawn(
    'qemu-system-x86_64',
    [
      '-accel',
      'tcg',
      '-machine',
      'pc',
      '-m',
      '32',
      '-nodefaults',
      '-display',
      'none',
      '-qmp',
      `unix:${sock},server=on,wait=off`,
      '-drive',
      `file=${disk},format=qcow2,if=none,id=drive0`,
      '-device',
      'virtio-blk-pci,drive=drive0',
    ],
    { stdio: 'ignore' },
  );
  const results: Record<string, { full: number[]; inc: number[] }> = {};
  let c: RawQmp | undefined;
  try {
    await waitForSocket(sock, 20_000);
    c = await RawQmp.connect(sock);
    const q = c;
    let n = 0;
    const job = async (target: string, extra: Record<string, unknown>): Promise<number> => {
      const mark = q.events.length;
      const id = `j${++n}`;
      const t0 = performance.now();
      await q.execute('blockdev-backup', { 'job-id': id, device: 'drive0', target, ...extra });
      const ev = await q.waitEvent((e) => e.event === 'BLOCK_JOB_COMPLETED' && e.data?.device === id, mark);
      if (ev.data?.error) throw new Error(ev.data.error);
      return performance.now() - t0;
    };
    const target = (incremental: boolean) => {
      const f = path.join(dir, 'target.qcow2');
      execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', ...(incremental ? ['-b', base, '-F', 'qcow2'] : []), f, size]);
      return f;
    };
    const local = async (extra: Record<string, unknown>, incremental: boolean) => {
      const f = target(incremental);
      await q.execute('blockdev-add', { driver: 'qcow2', 'node-name': 'tl', file: { driver: 'file', filename: f } });
      const t0 = performance.now();
      const j = await job('tl', extra);
      await q.execute('blockdev-del', { 'node-name': 'tl' });
      await fs.rm(f, { force: true });
      return [j, performance.now() - t0];
    };
    const nbd = (flags: string[]) => async (extra: Record<string, unknown>, incremental: boolean) => {
      const f = target(incremental);
      const s = path.join(dir, 'nbd.sock');
      await fs.rm(s, { force: true });
      const p = spawn('qemu-nbd', ['--format=qcow2', `--socket=${s}`, '--discard=unmap', '--detect-zeroes=unmap', ...flags, f], {
        stdio: 'ignore',
      });
      const exited = new Promise((r) => p.once('exit', r));
      await waitForSocket(s, 10_000);
      await q.execute('blockdev-add', { driver: 'nbd', 'node-name': 'tn', server: { type: 'unix', path: s }, export: '' });
      const t0 = performance.now();
      const j = await job('tn', extra);
      await q.execute('blockdev-del', { 'node-name': 'tn' });
      await exited;
      await fs.rm(f, { force: true });
      return [j, performance.now() - t0];
    };
    const variants: Record<string, (extra: Record<string, unknown>, incremental: boolean) => Promise<number[]>> = {
      "local qcow2 (in the VM's QEMU)": local,
      'qemu-nbd --cache=writeback --aio=threads (the product)': nbd(['--cache=writeback', '--aio=threads']),
      'qemu-nbd --cache=writeback --aio=io_uring': nbd(['--cache=writeback', '--aio=io_uring']),
      'qemu-nbd --cache=none --aio=threads': nbd(['--cache=none', '--aio=threads']),
      'qemu-nbd --cache=none --aio=native': nbd(['--cache=none', '--aio=native']),
      'qemu-nbd --cache=unsafe --aio=threads': nbd(['--cache=unsafe', '--aio=threads']),
    };
    for (let r = 0; r < rounds; r++) {
      for (const [name, fn] of Object.entries(variants)) {
        const full = await fn({ sync: 'full' }, false);
        await q.execute('block-dirty-bitmap-remove', { node: 'drive0', name: 'b' }).catch(() => undefined);
        await q.execute('block-dirty-bitmap-add', { node: 'drive0', name: 'b', granularity: 65536 });
        const stride = Math.floor(diskMiB / 26) * MiB;
        for (let i = 0; i < 26; i++)
          await q.execute('human-monitor-command', {
            'command-line': `qemu-io drive0 "write -P 0x${(0x30 + r).toString(16)} ${i * stride} 1M"`,
          });
        const inc = await fn({ sync: 'bitmap', bitmap: 'b', 'bitmap-mode': 'never' }, true);
        results[name] ??= { full: [], inc: [] };
        results[name].full.push(full[1]);
        results[name].inc.push(inc[1]);
        log(
          `copy path ${r + 1}/${rounds} ${name}: full (${dataMiB} MiB of data in ${diskMiB} MiB) job ${Math.round(full[0])} ms, with close ${Math.round(full[1])} ms; incremental 26 MiB job ${Math.round(inc[0])} ms, with close ${Math.round(inc[1])} ms`,
        );
      }
    }
    process.stdout.write(
      '| copy target | full, job + close (median ms) | incremental 26 MiB, job + close (median ms) |\n| --- | --- | --- |\n',
    );
    for (const [name, x] of Object.entries(results))
      process.stdout.write(`| ${name} | ${Math.round(median(x.full))} | ${Math.round(median(x.inc))} |\n`);
  } finally {
    await c?.close().catch(() => undefined);
    await endProcess(qemu);
    await rmrf(dir);
  }
}

main().catch((err) => {
  process.stderr.write(`copy-path failed: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
