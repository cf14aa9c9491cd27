// Lab guests for the benchmark: the lab's own guest image, command line and waits (lab/lab-vms.ts),
// in a lab directory of their own, plus one thing the lab does not give: a second QMP monitor per
// VM ("observer") outside the product's socket directory, so that the benchmark sees every STOP /
// RESUME event QEMU emits while the product holds the VM's own monitor.
import { promises as fs, existsSync } from 'node:fs';
import * as path from 'node:path';
import { buildGuest } from '../lab/guest-image';
import { qemuArgs, stopLab, vmPaths, waitForAgent, waitForWorkload, type LabVmPaths } from '../lab/lab-vms';
import { run as labRun } from '../lab/util';
import { QmpClient, type QmpEvent } from '../src/providers/qemu/protocol';
import { makeExt4DataDisk } from './images';
import { log, nowMs } from './util';

export interface BenchVmSpec {
  name: string;
  agent: boolean;
  dataSizeMiB: number;
  /** random data written into the data disk's file system (MiB) */
  fillMiB: number;
  memoryMiB?: number;
}

export interface ObservedEvent {
  event: string;
  at: number;
  data: unknown;
}

export class BenchVm {
  readonly events: ObservedEvent[] = [];
  observer?: QmpClient;
  bootMs = 0;

  constructor(
    readonly spec: BenchVmSpec,
    readonly paths: LabVmPaths,
    readonly observerSocket: string,
  ) {}

  get name(): string {
    return this.spec.name;
  }

  async connectObserver(): Promise<void> {
    this.observer = await QmpClient.connect(this.observerSocket, { timeoutMs: 30_000 });
    this.observer.on('event', (ev: QmpEvent) => {
      // QEMU's own timestamp of the event (host clock, microseconds)
      const at = ev.timestamp ? ev.timestamp.seconds * 1000 + ev.timestamp.microseconds / 1000 : nowMs();
      this.events.push({ event: ev.event, at, data: ev.data });
    });
  }

  /** STOP / RESUME events QEMU emitted between two host times. */
  runStateEvents(from: number, to: number): ObservedEvent[] {
    return this.events.filter((e) => (e.event === 'STOP' || e.event === 'RESUME') && e.at >= from && e.at <= to);
  }

  async status(): Promise<string> {
    return (await this.observer!.execute<{ status: string }>('query-status')).status;
  }

  /** Pause a VM not under measurement, so that its TCG vCPU does not load the host. */
  async pause(): Promise<void> {
    if ((await this.status()) === 'running') await this.observer!.execute('stop');
  }

  async resume(): Promise<void> {
    if ((await this.status()) !== 'running') await this.observer!.execute('cont');
  }
}

export interface BenchLab {
  labDir: string;
  vms: Map<string, BenchVm>;
  stop(): Promise<void>;
}

export async function startBenchLab(labDir: string, specs: BenchVmSpec[]): Promise<BenchLab> {
  await fs.mkdir(path.join(labDir, 'images'), { recursive: true });
  await fs.mkdir(path.join(labDir, 'run'), { recursive: true });
  await fs.mkdir(path.join(labDir, 'observe'), { recursive: true });
  await stopLab(labDir, { graceful: false }).catch(() => undefined); // leftovers of an interrupted run
  const guest = await buildGuest({ labDir, log: (m) => log(m) });
  const lab: BenchLab = {
    labDir,
    vms: new Map(),
    stop: async () => {
      await Promise.all([...lab.vms.values()].map((vm) => vm.observer?.close().catch(() => undefined)));
      await stopLab(labDir, { graceful: false });
    },
  };
  // disks first (CPU-bound), then boot every VM at once and wait for all
  for (const spec of specs) {
    const p = vmPaths(spec.name, labDir, 'qcow2');
    await fs.rm(p.dataImage, { force: true });
    const t0 = nowMs();
    await makeExt4DataDisk(p.dataImage, { sizeMiB: spec.dataSizeMiB, fillMiB: spec.fillMiB });
    log(
      `lab: ${spec.name}: ${spec.dataSizeMiB} MiB ext4 data disk with ${spec.fillMiB} MiB of random data made in ${Math.round(nowMs() - t0)} ms`,
    );
  }
  const started = new Map<string, number>();
  for (const spec of specs) {
    const p = vmPaths(spec.name, labDir, 'qcow2');
    const observer = path.join(labDir, 'observe', `${spec.name}.qmp`);
    for (const f of [p.qmpSocket, p.qgaSocket, p.pidFile, observer]) await fs.rm(f, { force: true });
    const args = [
      ...qemuArgs({ name: spec.name, agent: spec.agent, memoryMiB: spec.memoryMiB }, p, { guest, memoryMiB: spec.memoryMiB }),
      '-chardev',
      `socket,id=observer,path=${observer},server=on,wait=off`,
      '-mon',
      'chardev=observer,mode=control',
    ];
    started.set(spec.name, nowMs());
    const r = await labRun('qemu-system-x86_64', args, { timeoutMs: 60_000 });
    if (r.code !== 0) throw new Error(`qemu-system-x86_64 for ${spec.name} exited ${r.code}: ${r.stderr.trim()}`);
    const vm = new BenchVm(spec, p, observer);
    lab.vms.set(spec.name, vm);
  }
  try {
    await Promise.all(
      [...lab.vms.values()].map(async (vm) => {
        await vm.connectObserver();
        await waitForWorkload(vm.paths, 300_000);
        if (vm.spec.agent) await waitForAgent(vm.paths, 300_000);
        vm.bootMs = Math.round(nowMs() - started.get(vm.name)!);
        log(`lab: ${vm.name} ready after ${vm.bootMs} ms`);
      }),
    );
  } catch (err) {
    await lab.stop();
    throw err;
  }
  return lab;
}

/**
 * A socket directory holding one VM only, so that a backup set contains that VM alone:
 * <vm>.qmp and <vm>.pid link to the lab's, <vm>.qga is `qga` (a proxy) when given.
 */
export async function socketDirFor(root: string, vm: BenchVm, qga?: string): Promise<string> {
  const dir = path.join(root, vm.name);
  await fs.rm(dir, { recursive: true, force: true });
  await fs.mkdir(dir, { recursive: true });
  await fs.symlink(vm.paths.qmpSocket, path.join(dir, `${vm.name}.qmp`));
  if (existsSync(vm.paths.pidFile)) await fs.symlink(vm.paths.pidFile, path.join(dir, `${vm.name}.pid`));
  if (qga) await fs.symlink(qga, path.join(dir, `${vm.name}.qga`));
  return dir;
}
