// node dist/bench/fleet-paths.js [--vms=N] [--disk-mib=N] [--data-mib=N]
//
// The per-disk fixed cost of each way to copy a disk out of a point-in-time view (issue 22), with
// none of the product's code: N QEMU processes (no OS), two qcow2 disks each, the view made as the
// product makes it (copy-before-write filter + snapshot-access), then every disk copied by:
//   push-nbd   qemu-img create + a qemu-nbd per disk + QEMU's backup job (the product today)
//   push-qsd   one qemu-storage-daemon for all, a target created and exported per disk through
//              its own QMP, QEMU's backup job into it
//   pull       QEMU's NBD server on the view (one per VM, an export per disk), one
//              qemu-img convert per disk reading it (the target made by convert itself)
// and, after each: qemu-img compare of the copy with the view (the read-back check), and
// `qemu-img convert` of the disk image alone (the floor the scale target is measured against).
// Prints ms per disk (wall, disks one after the other) for each.
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { bareVmArgs, waitForSocket } from '../test/support/bare-vms';
import { makeDataImage } from './images';
import { RawQmp } from './qmp-raw';
import { log, median, MiB, run } from './util';

const arg = (name: string, dflt: number) => Number(process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1] ?? dflt);

interface Vm {
  id: string;
  qmp: string;
  disks: string[];
  proc: ChildProcess;
  nodes: string[];
  qdevs: string[];
}

async function view(c: RawQmp, vm: Vm, dir: string, size: number, fleeceRaw: boolean): Promise<void> {
  const block = await c.execute<{ device: string; qdev: string; inserted: { 'node-name': string } }[]>('query-block');
  vm.nodes = vm.disks.map((_, i) => block.find((b) => b.device === `drive-virtio${i}`)!.inserted['node-name']);
  vm.qdevs = vm.disks.map((_, i) => block.find((b) => b.device === `drive-virtio${i}`)!.qdev);
  for (let i = 0; i < vm.disks.length; i++) {
    const fleece = path.join(dir, `${vm.id}-${i}.fleece`);
    if (fleeceRaw) {
      const fh = await fs.open(fleece, 'wx', 0o600);
      await fh.truncate(size);
      await fh.close();
      await c.execute('blockdev-add', { driver: 'file', 'node-name': `f${i}`, filename: fleece, discard: 'unmap' });
    } else {
      await run('qemu-img', ['create', '-q', '-f', 'qcow2', fleece, String(size)]);
      await c.execute('blockdev-add', {
        driver: 'qcow2',
        'node-name': `f${i}`,
        discard: 'unmap',
        file: { driver: 'file', filename: fleece },
      });
    }
    await c.execute('blockdev-add', {
      driver: 'copy-before-write',
      'node-name': `c${i}`,
      file: vm.nodes[i],
      target: `f${i}`,
      'on-cbw-error': 'break-snapshot',
      'cbw-timeout': 5,
    });
    await c.execute('qom-set', { path: vm.qdevs[i], property: 'drive', value: `c${i}` });
    await c.execute('blockdev-add', { driver: 'snapshot-access', 'node-name': `a${i}`, file: `c${i}` });
  }
}

async function unview(c: RawQmp, vm: Vm): Promise<void> {
  for (let i = 0; i < vm.disks.length; i++) {
    await c.execute('blockdev-del', { 'node-name': `a${i}` });
    await c.execute('qom-set', { path: vm.qdevs[i], property: 'drive', value: vm.nodes[i] });
    await c.execute('blockdev-del', { 'node-name': `c${i}` });
    await c.execute('blockdev-del', { 'node-name': `f${i}` });
  }
}

function waitSock(sock: string): Promise<void> {
  return waitForSocket(sock, 10_000);
}

async function pushNbd(c: RawQmp, i: number, dest: string, size: number, nbdArgs: string[]): Promise<void> {
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', dest, String(size)]);
  const sock = `${dest}.sock`;
  const nbd = spawn('qemu-nbd', ['--format=qcow2', `--socket=${sock}`, '--discard=unmap', '--detect-zeroes=unmap', ...nbdArgs, dest], {
    stdio: 'ignore',
  });
  const exited = new Promise((r) => nbd.once('exit', r));
  await waitSock(sock);
  await c.execute('blockdev-add', { driver: 'nbd', 'node-name': `t${i}`, server: { type: 'unix', path: sock }, export: '' });
  const mark = c.events.length;
  await c.execute('blockdev-backup', { 'job-id': `j${i}`, device: `a${i}`, target: `t${i}`, sync: 'full', 'auto-dismiss': true });
  await c.waitEvent((e) => e.event === 'BLOCK_JOB_COMPLETED' && e.data?.device === `j${i}`, mark);
  await c.execute('blockdev-del', { 'node-name': `t${i}` });
  await exited;
}

async function pushQsd(c: RawQmp, q: RawQmp, qsdSock: string, i: number, dest: string, size: number, tag: string): Promise<void> {
  const id = `${tag}${i}`;
  const mark = q.events.length;
  await q.execute('blockdev-create', { 'job-id': `cf${id}`, options: { driver: 'file', filename: dest, size: 0 } });
  await q.waitEvent((e) => e.event === 'JOB_STATUS_CHANGE' && e.data?.id === `cf${id}` && e.data?.status === 'concluded', mark);
  await q.execute('job-dismiss', { id: `cf${id}` });
  await q.execute('blockdev-add', { driver: 'file', 'node-name': `tf${id}`, filename: dest });
  const mark2 = q.events.length;
  await q.execute('blockdev-create', { 'job-id': `cq${id}`, options: { driver: 'qcow2', file: `tf${id}`, size } });
  await q.waitEvent((e) => e.event === 'JOB_STATUS_CHANGE' && e.data?.id === `cq${id}` && e.data?.status === 'concluded', mark2);
  await q.execute('job-dismiss', { id: `cq${id}` });
  await q.execute('blockdev-add', { driver: 'qcow2', 'node-name': `tq${id}`, file: `tf${id}`, discard: 'unmap' });
  await q.execute('block-export-add', { type: 'nbd', id: `e${id}`, 'node-name': `tq${id}`, name: `e${id}`, writable: true });
  await c.execute('blockdev-add', { driver: 'nbd', 'node-name': `t${i}`, server: { type: 'unix', path: qsdSock }, export: `e${id}` });
  const m = c.events.length;
  await c.execute('blockdev-backup', { 'job-id': `j${i}`, device: `a${i}`, target: `t${i}`, sync: 'full', 'auto-dismiss': true });
  await c.waitEvent((e) => e.event === 'BLOCK_JOB_COMPLETED' && e.data?.device === `j${i}`, m);
  await c.execute('blockdev-del', { 'node-name': `t${i}` });
  const m3 = q.events.length;
  await q.execute('block-export-del', { id: `e${id}` });
  await q.waitEvent((e) => e.event === 'BLOCK_EXPORT_DELETED' && e.data?.id === `e${id}`, m3);
  await q.execute('blockdev-del', { 'node-name': `tq${id}` });
  await q.execute('blockdev-del', { 'node-name': `tf${id}` });
}

async function main(): Promise<void> {
  const n = arg('vms', 4);
  const diskMiB = arg('disk-mib', 32);
  const dataMiB = arg('data-mib', 8);
  const size = diskMiB * MiB;
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmb-fleet-paths-'));
  const t: Record<string, number[]> = {};
  const time = async (name: string, fn: () => Promise<unknown>) => {
    if (process.env.BENCH_DEBUG) log(`start ${name}`);
    const t0 = performance.now();
    await fn();
    (t[name] ??= []).push(performance.now() - t0);
  };
  const vms: Vm[] = [];
  let qsd: ChildProcess | undefined;
  try {
    const template = path.join(dir, 'template.qcow2');
    await makeDataImage(template, { virtualMiB: diskMiB, dataMiB, layout: 'spread' });
    for (let v = 0; v < n; v++) {
      const id = `fp${v}`;
      const disks = [0, 1].map((i) => path.join(dir, `${id}-disk${i}.qcow2`));
      for (const d of disks) await fs.copyFile(template, d);
      const qmp = path.join(dir, `${id}.qmp`);
      const proc = spawn(
        'qemu-system-x86_64',
        bareVmArgs(
          id,
          qmp,
          disks.map((file) => ({ file })),
        ),
        { stdio: 'ignore' },
      );
      vms.push({ id, qmp, disks, proc, nodes: [], qdevs: [] });
    }
    for (const vm of vms) await waitSock(vm.qmp);
    const qsdQmp = path.join(dir, 'qsd.qmp');
    const qsdNbd = path.join(dir, 'qsd.nbd');
    qsd = spawn(
      'qemu-storage-daemon',
      [
        '--chardev',
        `socket,id=m,path=${qsdQmp},server=on,wait=off`,
        '--monitor',
        'chardev=m',
        '--nbd-server',
        `addr.type=unix,addr.path=${qsdNbd}`,
      ],
      { stdio: 'ignore' },
    );
    await waitSock(qsdQmp);
    const q = await RawQmp.connect(qsdQmp);
    let k = 0;
    for (const vm of vms) {
      const c = await RawQmp.connect(vm.qmp);
      const out = (tag: string, i: number) => path.join(dir, `${vm.id}-${i}-${tag}-${k++}.qcow2`);
      await fs.mkdir(path.join(dir, 'v', vm.id), { recursive: true });
      await time('view (qcow2 fleece, qemu-img create), per VM', () => view(c, vm, path.join(dir, 'v', vm.id), size, false));
      await unview(c, vm);
      await fs.rm(path.join(dir, 'v', vm.id), { recursive: true, force: true });
      await fs.mkdir(path.join(dir, 'v', vm.id), { recursive: true });
      await time('view (raw sparse fleece, no process), per VM', () => view(c, vm, path.join(dir, 'v', vm.id), size, true));
      for (let i = 0; i < 2; i++) {
        const a = out('nbdwb', i);
        await time('push-nbd writeback', () => pushNbd(c, i, a, size, ['--cache=writeback', '--aio=threads']));
        await time('push-nbd none', () => pushNbd(c, i, out('nbdnone', i), size, ['--cache=none', '--aio=threads']));
        await time('push-qsd', () => pushQsd(c, q, qsdNbd, i, out('qsd', i), size, `${vm.id}x${k}`));
        await time('floor: qemu-img convert of the image', () =>
          run('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'qcow2', vm.disks[i], out('floor', i)]),
        );
      }
      const sock = path.join(dir, `${vm.id}.view.sock`);
      await time('pull: nbd-server-start + 2 exports, per VM', async () => {
        await c.execute('nbd-server-start', { addr: { type: 'unix', data: { path: sock } } });
        for (let i = 0; i < 2; i++)
          await c.execute('block-export-add', { type: 'nbd', id: `x${i}`, 'node-name': `a${i}`, name: `d${i}`, writable: false });
      });
      for (let i = 0; i < 2; i++) {
        const p = out('pull', i);
        await time('pull: qemu-img convert from the export', () =>
          run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', `nbd+unix:///d${i}?socket=${sock}`, p]),
        );
        await time('pull: qemu-img convert -t none from the export', () =>
          run('qemu-img', ['convert', '-t', 'none', '-f', 'raw', '-O', 'qcow2', `nbd+unix:///d${i}?socket=${sock}`, out('pullnone', i)]),
        );
        await time('read-back: qemu-img compare with the export', () =>
          run('qemu-img', ['compare', '-q', '-f', 'raw', '-F', 'qcow2', `nbd+unix:///d${i}?socket=${sock}`, p]),
        );
      }
      await time('pull: nbd-server-stop, per VM', () => c.execute('nbd-server-stop'));
      await time('unview, per VM', () => unview(c, vm));
      await c.close();
      await time('QMP connect + capabilities + query-named-block-nodes + close', async () => {
        const c2 = await RawQmp.connect(vm.qmp).catch(() => undefined);
        if (!c2) return;
        await c2.execute('query-named-block-nodes', { flat: true });
        await c2.close();
      });
    }
    await q.close();
  } finally {
    qsd?.kill('SIGTERM');
    for (const vm of vms) vm.proc.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 500));
    await fs.rm(dir, { recursive: true, force: true });
  }
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(t))
    out[k] = `median ${median(v).toFixed(1)} ms (n=${v.length}; ${v.map((x) => Math.round(x)).join(' ')})`;
  log(
    `fleet-paths: ${n} VMs x 2 disks of ${diskMiB} MiB (${dataMiB} MiB data), load ${os
      .loadavg()
      .map((x) => x.toFixed(1))
      .join(' ')}`,
  );
  console.log(JSON.stringify(out, null, 2));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
