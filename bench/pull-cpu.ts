// node dist/bench/pull-cpu.js [--rounds=N] [--data-mib=N]
//
// Where the in-process full (src/providers/qemu/pull-stream.ts) spends its time, against the copy
// target's floor (`qemu-img convert` + one sha256 pass of its output, as bench/sec-freeze.ts's
// baselineCopy), without Node-RED: one QEMU process (a PC with no OS, the disk on a virtio device)
// and a point-in-time view built the way view.ts builds it (a sparse raw fleecing file, the
// copy-before-write filter switched under the device, a snapshot-access node, exported read-only
// on QEMU's NBD server). Per round:
//   reads alone   our NBD client reads the whole export (512 KiB reads, four in flight), writes nothing
//   pull          pullStream: the reads, the qcow2 written and hashed as written
//   pull checked  the same with the read-back check (the copy node's Verify)
//   floor         qemu-img convert of the image file + sha256 of the output (Node's crypto, one pass)
// each with the CPU it took: this process (all its threads), its event loop's busy time, QEMU's.
// Prints a table of medians. A benchmark, not a test: nothing here gates CI.
import { execFileSync, spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import { readFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { bareVmArgs, waitForSocket } from '../test/support/bare-vms';
import { NbdClient } from '../src/nbd/client';
import { pullStream } from '../src/providers/qemu/pull-stream';
import { sha256File } from '../src/repository/repository';
import { makeDataImage } from './images';
import { RawQmp } from './qmp-raw';
import { endProcess, log, median, MiB, rmrf } from './util';

const arg = (name: string, dflt: number) => Number(process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1] ?? dflt);

/** user + system CPU of a process from /proc (ms; 10 ms ticks) */
function procCpuMs(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) * 10;
}

interface Sample {
  ms: number;
  /** this process, every thread (the thread pool's writes and reads included) */
  cpuMs: number;
  /** the event loop's busy time (the one thread that hashes and compares) */
  loopMs: number;
  qemuMs: number;
}

async function measure(qemuPid: number, fn: () => Promise<unknown>): Promise<Sample> {
  const q0 = procCpuMs(qemuPid);
  const c0 = process.cpuUsage();
  const e0 = performance.eventLoopUtilization();
  const t0 = performance.now();
  await fn();
  const ms = performance.now() - t0;
  const c = process.cpuUsage(c0);
  return {
    ms,
    cpuMs: (c.user + c.system) / 1000,
    loopMs: performance.eventLoopUtilization(e0).active,
    qemuMs: procCpuMs(qemuPid) - q0,
  };
}

async function main(): Promise<void> {
  const rounds = arg('rounds', 5);
  const dataMiB = arg('data-mib', 256);
  const size = dataMiB * MiB;
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmb-pull-cpu-'));
  const disk = path.join(dir, 'disk.qcow2');
  await makeDataImage(disk, { virtualMiB: dataMiB, dataMiB, layout: 'packed' });
  const sock = path.join(dir, 'qmp.sock');
  const nbd = path.join(dir, 'nbd.sock');
  const fleece = path.join(dir, 'fleece.raw');
  const qemu = spawn('qemu-system-x86_64', bareVmArgs('pull-cpu', sock, [{ file: disk }]), { stdio: 'ignore' });
  const results: Record<string, Sample[]> = { 'reads alone': [], pull: [], 'pull checked': [], floor: [] };
  let c: RawQmp | undefined;
  try {
    await waitForSocket(sock, 20_000);
    c = await RawQmp.connect(sock);
    // the view, as view.ts makes it
    await fs.writeFile(fleece, '');
    await fs.truncate(fleece, size);
    // the disk's device and the format node under it (QEMU names the node)
    const dev = ((await c.execute('query-block')) as { qdev?: string; inserted?: { 'node-name': string } }[]).find((b) => b.inserted);
    if (!dev?.qdev || !dev.inserted) throw new Error('the disk has no device');
    const qdev = dev.qdev;
    await c.execute('blockdev-add', { driver: 'file', 'node-name': 'fl', filename: fleece, discard: 'unmap' });
    await c.execute('blockdev-add', {
      driver: 'copy-before-write',
      'node-name': 'cbw',
      file: dev.inserted['node-name'],
      target: 'fl',
      'on-cbw-error': 'break-snapshot',
      'cbw-timeout': 5,
    });
    await c.execute('qom-set', { path: qdev, property: 'drive', value: 'cbw' });
    await c.execute('blockdev-add', { driver: 'snapshot-access', 'node-name': 'acc', file: 'cbw' });
    await c.execute('nbd-server-start', { addr: { type: 'unix', data: { path: nbd } } });
    await c.execute('block-export-add', { type: 'nbd', id: 'e0', 'node-name': 'acc', name: 'view', writable: false });
    const pid = qemu.pid!;
    const dest = path.join(dir, 'copy.qcow2');
    const floorOut = path.join(dir, 'floor.qcow2');
    const pull = (checked: boolean) => async () => {
      await fs.rm(dest, { force: true });
      return measure(pid, () =>
        pullStream({
          socket: nbd,
          exportName: 'view',
          context: 'base:allocation',
          copies: (e) => (e.flags & 2) === 0,
          size,
          dest,
          readSize: 512 << 10,
          ...(checked ? { checkAs: 'drive0' } : {}),
        }),
      );
    };
    const variants: Record<string, () => Promise<Sample>> = {
      'reads alone': () =>
        measure(pid, async () => {
          const client = await NbdClient.connect({ socket: nbd, exportName: 'view' });
          const bufs = Array.from({ length: 4 }, () => Buffer.allocUnsafe(512 << 10));
          let next = 0;
          await Promise.all(
            bufs.map(async (b) => {
              for (; next < size;) {
                const at = next;
                next += b.length;
                await client.read(at, Math.min(b.length, size - at), b);
              }
            }),
          );
          await client.close();
        }),
      pull: pull(false),
      'pull checked': pull(true),
      floor: async () => {
        await fs.rm(floorOut, { force: true });
        const s = await measure(pid, async () => {
          execFileSync('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'qcow2', disk, floorOut]);
          await sha256File(floorOut);
        });
        // qemu-img's own CPU is not this process's: the floor is counted by its wall time
        return s;
      },
    };
    for (let r = 0; r < rounds; r++) {
      const line: string[] = [];
      for (const [name, fn] of Object.entries(variants)) {
        const s = await fn();
        results[name].push(s);
        line.push(`${name} ${Math.round(s.ms)} ms`);
      }
      log(`pull cpu ${r + 1}/${rounds} (${dataMiB} MiB): ${line.join(', ')}`);
    }
    process.stdout.write(
      `| ${dataMiB} MiB of data | ms | CPU of this process, all threads (ms) | its event loop busy (ms) | QEMU CPU (ms) |\n| --- | --- | --- | --- | --- |\n`,
    );
    for (const [name, xs] of Object.entries(results)) {
      const m = (k: keyof Sample) => Math.round(median(xs.map((x) => x[k])));
      const own = name === 'floor' ? 'n/a (qemu-img)' : String(m('cpuMs'));
      process.stdout.write(`| ${name} | ${m('ms')} | ${own} | ${name === 'floor' ? 'n/a' : m('loopMs')} | ${m('qemuMs')} |\n`);
    }
  } finally {
    await c?.close().catch(() => undefined);
    await endProcess(qemu);
    await rmrf(dir);
  }
}

main().catch((err) => {
  process.stderr.write(`${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
