// Many QEMU processes without a guest OS (-machine pc, no boot disk, as test/support/bare-vms.ts starts them)
// with two qcow2 disks each holding real data, and a pidfile each (as Proxmox and libvirt keep
// them), so that a host of 100 VMs x 2 disks costs a few seconds to start.
//
// What the idle VMs cost the host while the product runs depends on what their vCPU does. With
// QEMU's own firmware (SeaBIOS, finding no boot disk) the vCPU wakes to the firmware's timer ticks,
// and under TCG (no KVM here) each VM then costs 6-8 ms of CPU a second (2 of them QEMU's main loop,
// the rest the vCPU): 200 of them take more than 1.3 of the 2 cores. `firmware: 'halt'` boots a
// 64 KiB firmware of ours whose reset vector is `cli; hlt` and turns the PC's interval timer off
// (`-machine pit=off`): the vCPU halts for good and nothing ticks, as an idle KVM guest halts in
// `hlt`; such a VM costs nothing measurable (no wakeup of its main loop in 3 s, `strace -p`; no CPU
// tick in 5 s). Nothing the product sees differs (the same devices, disks, QMP and run state).
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { bareVmArgs, waitForSocket } from '../test/support/bare-vms';
import { makeDataImage } from './images';
import { endProcess, log, nowMs, procMem } from './util';

export interface BareFleet {
  dir: string;
  imageDir: string;
  runDir: string;
  ids: string[];
  procs: Map<string, ChildProcess>;
  /** every disk of every VM */
  disks: Map<string, string[]>;
  stop(): Promise<void>;
  /** RSS of one QEMU process (MiB), to show what a VM costs here */
  qemuRssMiB(): number;
}

export interface FleetOptions {
  count: number;
  disksPerVm: number;
  /** template disks: virtual size and random data (MiB); every disk is a copy of the template */
  diskMiB: number;
  dataMiB: number;
  prefix?: string;
  /** 'seabios' (QEMU's own, the default) or 'halt' (a vCPU halted at its first instruction, no timer; see above) */
  firmware?: 'seabios' | 'halt';
}

/** A 64 KiB PC firmware image whose reset vector (its last 16 bytes) is `cli; hlt; jmp $-1`. */
export async function writeHaltFirmware(file: string): Promise<void> {
  const rom = Buffer.alloc(64 * 1024, 0xff);
  Buffer.from([0xfa, 0xf4, 0xeb, 0xfd]).copy(rom, 0xfff0);
  await fs.writeFile(file, rom);
}

export async function startFleet(dir: string, o: FleetOptions): Promise<BareFleet> {
  const imageDir = path.join(dir, 'images');
  const runDir = path.join(dir, 'run');
  await fs.rm(dir, { recursive: true, force: true });
  await fs.mkdir(imageDir, { recursive: true });
  await fs.mkdir(runDir, { recursive: true });
  const template = path.join(dir, 'template.qcow2');
  const firmware = path.join(dir, 'halt.rom');
  if (o.firmware === 'halt') await writeHaltFirmware(firmware);
  await makeDataImage(template, { virtualMiB: o.diskMiB, dataMiB: o.dataMiB, layout: 'spread' });
  const ids = Array.from({ length: o.count }, (_, i) => `${o.prefix ?? 'vm'}${String(i + 1).padStart(3, '0')}`);
  const fleet: BareFleet = {
    dir,
    imageDir,
    runDir,
    ids,
    procs: new Map(),
    disks: new Map(),
    stop: async () => {
      await Promise.all([...fleet.procs.values()].map(endProcess));
      await fs.rm(dir, { recursive: true, force: true });
    },
    qemuRssMiB: () => {
      const rss = [...fleet.procs.values()].map((p) => procMem(p.pid!)?.rssKiB ?? 0).filter((n) => n > 0);
      return rss.length ? Math.round(rss.reduce((a, b) => a + b, 0) / rss.length / 1024) : 0;
    },
  };
  const t0 = nowMs();
  const startOne = async (id: string) => {
    const disks: string[] = [];
    for (let d = 0; d < o.disksPerVm; d++) {
      const file = path.join(imageDir, `${id}-disk${d}.qcow2`);
      if (o.count === 1 && o.disksPerVm === 1)
        await fs.rename(template, file); // one disk: no copy of a big image
      else await fs.copyFile(template, file);
      disks.push(file);
    }
    fleet.disks.set(id, disks);
    const args = bareVmArgs(
      id,
      path.join(runDir, `${id}.qmp`),
      disks.map((file) => ({ file })),
      ['-pidfile', path.join(runDir, `${id}.pid`), ...(o.firmware === 'halt' ? ['-bios', firmware, '-machine', 'pit=off'] : [])],
    );
    const child = spawn('qemu-system-x86_64', args, { stdio: 'ignore' });
    fleet.procs.set(id, child);
    await waitForSocket(path.join(runDir, `${id}.qmp`), 20_000);
  };
  // a few at a time: each start is mostly waiting
  let next = 0;
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      while (next < ids.length) await startOne(ids[next++]);
    }),
  );
  log(
    `fleet: ${o.count} QEMU processes x ${o.disksPerVm} disks (${o.diskMiB} MiB, ${o.dataMiB} MiB data each${o.firmware === 'halt' ? ', vCPUs halted' : ''}) started in ${Math.round(nowMs() - t0)} ms`,
  );
  return fleet;
}

/** A socket directory with the first `n` VMs of the fleet (links to their sockets and pidfiles). */
export async function fleetSocketDir(
  root: string,
  fleet: BareFleet,
  n: number,
  name = `${path.basename(fleet.dir)}-${n}`,
): Promise<string> {
  const dir = path.join(root, name);
  await fs.rm(dir, { recursive: true, force: true });
  await fs.mkdir(dir, { recursive: true });
  for (const id of fleet.ids.slice(0, n)) {
    await fs.symlink(path.join(fleet.runDir, `${id}.qmp`), path.join(dir, `${id}.qmp`));
    await fs.symlink(path.join(fleet.runDir, `${id}.pid`), path.join(dir, `${id}.pid`));
  }
  return dir;
}
