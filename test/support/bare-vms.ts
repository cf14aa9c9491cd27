// Real QEMU processes without a guest OS: real QMP, real block graph, real snapshots and
// merges, started in a fraction of a second. Used where a test needs a host, not a guest.
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs, existsSync, mkdtempSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as net from 'node:net';
import { QmpClient } from '../../src/providers/qemu/protocol';
import { runProgram } from '../../src/util/run';

export interface BareHost {
  dir: string;
  socketDir: string;
  imageDir: string;
  repository: string;
  vms: Map<string, ChildProcess>;
  stop(): Promise<void>;
}

export async function makeImage(file: string, size = '16M', format = 'qcow2'): Promise<void> {
  await runProgram('qemu-img', ['create', '-q', '-f', format, file, size]);
}

/** Start `ids` as QEMU processes with one (or `disks`) qcow2 disks each, sockets named <id>.qmp. */
export async function startBareHost(ids: string[], opts: { disks?: number; dir?: string } = {}): Promise<BareHost> {
  const dir = opts.dir ?? mkdtempSync(path.join(os.tmpdir(), 'vmb-bare-'));
  const host: BareHost = {
    dir,
    socketDir: path.join(dir, 'run'),
    imageDir: path.join(dir, 'images'),
    repository: path.join(dir, 'repository'),
    vms: new Map(),
    stop: async () => {
      await Promise.all(
        [...host.vms.values()].map(
          (p) =>
            new Promise<void>((resolve) => {
              if (p.exitCode !== null || p.signalCode !== null) return resolve();
              p.once('exit', () => resolve());
              p.kill('SIGTERM');
            }),
        ),
      );
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
  await fs.mkdir(host.socketDir, { recursive: true });
  await fs.mkdir(host.imageDir, { recursive: true });
  await fs.mkdir(host.repository, { recursive: true });
  for (const id of ids) await startBareVm(host, id, opts.disks ?? 1);
  return host;
}

/**
 * The QEMU argument vector of a bare VM: a PC with no OS (the firmware finds nothing to boot and
 * halts, no CPU used) and a virtio-blk device per disk, as a VM's disk always has (the
 * point-in-time view switches the device onto its filter). Shared by the tests and the benchmarks.
 */
export function bareVmArgs(
  id: string,
  qmpSocket: string,
  disks: readonly { file: string; format?: string }[],
  extra: readonly string[] = [],
): string[] {
  const args = [
    '-accel',
    'tcg',
    '-machine',
    'pc',
    '-m',
    '32',
    '-nodefaults',
    '-display',
    'none',
    '-name',
    id,
    ...extra,
    '-qmp',
    `unix:${qmpSocket},server=on,wait=off`,
  ];
  disks.forEach((d, i) =>
    args.push(
      '-drive',
      `file=${d.file},format=${d.format ?? 'qcow2'},if=none,id=drive-virtio${i}`,
      '-device',
      `virtio-blk-pci,drive=drive-virtio${i},id=virtio${i}`,
    ),
  );
  return args;
}

export async function startBareVm(host: BareHost, id: string, disks = 1): Promise<void> {
  const files: { file: string }[] = [];
  for (let i = 0; i < disks; i++) {
    const file = path.join(host.imageDir, `${id}-disk${i}.qcow2`);
    if (!existsSync(file)) await makeImage(file);
    files.push({ file });
  }
  const qmp = path.join(host.socketDir, `${id}.qmp`);
  const child = spawn('qemu-system-x86_64', bareVmArgs(id, qmp, files), { stdio: 'ignore' });
  host.vms.set(id, child);
  await waitForSocket(qmp);
}

/** Resolves once something accepts connections on the unix socket `file` (QEMU's QMP, qemu-ga). */
export async function waitForSocket(file: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const c = net.connect(file, () => {
        c.destroy();
        resolve(true);
      });
      c.on('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`${file} did not appear`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Files anywhere under dir whose name says they are ours (fleecing images of a point-in-time view). */
export async function overlaysUnder(dir: string): Promise<string[]> {
  const found: string[] = [];
  for (const entry of (await fs.readdir(dir, { withFileTypes: true, recursive: true } as any)) as any[]) {
    if (/\.vmbackup-.*\.qcow2/.test(entry.name)) found.push(path.join(entry.parentPath ?? entry.path, entry.name));
  }
  return found;
}

/** One QMP connection to a bare VM for `fn`, closed afterwards (a test's own client, beside the provider's). */
export async function withQmp<T>(host: BareHost, vm: string, fn: (c: QmpClient) => Promise<T>): Promise<T> {
  const c = await QmpClient.connect(path.join(host.socketDir, `${vm}.qmp`));
  try {
    return await fn(c);
  } finally {
    await c.close();
  }
}
