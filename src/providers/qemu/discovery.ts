// VMs are found as sockets in one directory, named the way Proxmox names them:
//   <id>.qmp  the QMP monitor (required)   <id>.qga  the guest agent channel (optional)
//   <id>.pid  QEMU's -pidfile (optional; else the process is found by its command line)
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { isSafeName } from '../../util/ids';
import { borrow, giveBack } from '../../util/buffer-pool';

export interface DiscoveredVm {
  id: string;
  qmp: string;
  qga?: string;
  pidFile?: string;
}

export interface Discovery {
  vms: DiscoveredVm[];
  /** sockets whose names cannot be VM ids */
  skipped: string[];
}

export async function discoverVms(socketDir: string): Promise<Discovery> {
  const names = new Set(
    await fs.readdir(socketDir).catch((err: NodeJS.ErrnoException) => {
      throw new Error(`socketDir: cannot read ${socketDir} (${err.code ?? err.message})`);
    }),
  );
  const vms: DiscoveredVm[] = [];
  const skipped: string[] = [];
  for (const name of [...names].sort()) {
    if (!name.endsWith('.qmp')) continue;
    const id = name.slice(0, -'.qmp'.length);
    if (!isSafeName(id)) {
      skipped.push(name);
      continue;
    }
    const vm: DiscoveredVm = { id, qmp: path.join(socketDir, name) };
    if (names.has(`${id}.qga`)) vm.qga = path.join(socketDir, `${id}.qga`);
    if (names.has(`${id}.pid`)) vm.pidFile = path.join(socketDir, `${id}.pid`);
    vms.push(vm);
  }
  return { vms, skipped };
}

/** QEMU's pid: from its pidfile, else the process whose command line names the QMP socket. */
export async function findQemuPid(vm: DiscoveredVm): Promise<number | undefined> {
  if (vm.pidFile) {
    const pid = Number.parseInt(await fs.readFile(vm.pidFile, 'utf8').catch(() => ''), 10);
    if (Number.isInteger(pid) && pid > 0 && (await readCmdline(pid)) !== undefined) return pid;
  }
  for (const entry of await fs.readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(entry)) continue;
    const argv = await readCmdline(Number(entry));
    if (argv && argv.some((a) => a.includes(vm.qmp))) return Number(entry);
  }
  return undefined;
}

/**
 * A /proc file's content: read into a pooled 64 KiB buffer and copied out (fs.readFile of a file
 * whose size /proc does not say allocates 64 KiB pieces: garbage for every VM asked about, four
 * times a backup; util/buffer-pool.ts). A longer file is read whole by fs.readFile.
 */
async function readSmallFile(file: string): Promise<Buffer> {
  const buf = borrow(64 << 10);
  try {
    const fh = await fs.open(file, 'r');
    try {
      let n = 0;
      for (;;) {
        const { bytesRead } = await fh.read(buf, n, buf.length - n, null);
        if (bytesRead === 0) return Buffer.from(buf.subarray(0, n));
        n += bytesRead;
        if (n === buf.length) return await fs.readFile(file);
      }
    } finally {
      await fh.close();
    }
  } finally {
    giveBack(buf);
  }
}

export async function readCmdline(pid: number): Promise<string[] | undefined> {
  try {
    const raw = await readSmallFile(`/proc/${pid}/cmdline`);
    return raw
      .toString('utf8')
      .split('\0')
      .filter((a, i, all) => a !== '' || i < all.length - 1);
  } catch {
    return undefined;
  }
}
