/**
 * Lab VMs: small TCG QEMU guests (see guest-image.ts) with a data disk that a
 * workload writes to continuously, so the product has real writers to back up.
 *
 * Layout under the lab dir (default /tmp/vm-backup-lab, env VMBACKUP_LAB_DIR):
 *   guest/initramfs-<hash>.cpio.gz, guest/guest.json   (cached guest image)
 *   images/<vm>-data.qcow2 (or .raw)                    (data disk, ext4, serial "data")
 *   images/vm-passthrough-nbd.raw                       (disk served by qemu-nbd)
 *   run/<vm>.qmp   QMP socket (server, nowait)
 *   run/<vm>.qga   guest agent chardev socket (virtserialport org.qemu.guest_agent.0)
 *   run/<vm>.pid   QEMU pidfile
 *   run/<vm>.log   serial console
 *   run/vm-passthrough-nbd.sock / .pid                  (qemu-nbd server)
 *   lab.json       VM specs of the last startLab()
 *
 * QEMU runs with -daemonize (own session), so VMs outlive the Node process
 * that started them. Always -accel tcg.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { buildGuest, defaultLabDir, GuestImage, QGA_PORT_NAME, verifyRecords, RecordsVerification } from './guest-image';
import { installPackages } from './install-packages';
import { qgaPing, QgaSession, qmpCommand } from './jsonline';
import {
  execFileBuffer,
  exists,
  isSocket,
  mkdirp,
  pidAlive,
  pidCmdline,
  readPidFile,
  rmf,
  run,
  runOk,
  sleep,
  tailFile,
  waitUntil,
} from './util';

export { defaultLabDir } from './guest-image';

export type DiskFormat = 'qcow2' | 'raw';

export interface LabVmSpec {
  name: string;
  /** run qemu-ga in the guest (the qga socket exists either way) */
  agent: boolean;
  /** attach an extra network (NBD) disk served by qemu-nbd */
  nbdDisk?: boolean;
  memoryMiB?: number;
  /** workload record period in ms (default 50) */
  rateMs?: number;
}

export const DEFAULT_VMS: readonly LabVmSpec[] = [
  { name: 'vm-agent', agent: true },
  { name: 'vm-noagent', agent: false },
  { name: 'vm-passthrough', agent: true, nbdDisk: true },
];

export interface LabVmPaths {
  name: string;
  labDir: string;
  dataImage: string;
  dataFormat: DiskFormat;
  qmpSocket: string;
  qgaSocket: string;
  pidFile: string;
  logFile: string;
  nbdImage: string;
  nbdSocket: string;
  nbdPidFile: string;
}

/** Paths of one lab VM. The data format is taken from an existing image if not given. */
export function vmPaths(name: string, labDir: string = defaultLabDir(), dataFormat?: DiskFormat): LabVmPaths {
  const images = path.join(labDir, 'images');
  const runDir = path.join(labDir, 'run');
  let fmt: DiskFormat = dataFormat ?? 'qcow2';
  if (!dataFormat) {
    const stored = readLabState(labDir)?.vms.find((v) => v.name === name)?.dataFormat;
    if (stored) fmt = stored;
    else if (!exists(path.join(images, `${name}-data.qcow2`)) && exists(path.join(images, `${name}-data.raw`))) fmt = 'raw';
  }
  return {
    name,
    labDir,
    dataImage: path.join(images, `${name}-data.${fmt}`),
    dataFormat: fmt,
    qmpSocket: path.join(runDir, `${name}.qmp`),
    qgaSocket: path.join(runDir, `${name}.qga`),
    pidFile: path.join(runDir, `${name}.pid`),
    logFile: path.join(runDir, `${name}.log`),
    nbdImage: path.join(images, `${name}-nbd.raw`),
    nbdSocket: path.join(runDir, `${name}-nbd.sock`),
    nbdPidFile: path.join(runDir, `${name}-nbd.pid`),
  };
}

// ---------------------------------------------------------------------------
// lab.json

interface LabStateVm extends LabVmSpec {
  dataFormat: DiskFormat;
  startedAt?: string;
}
interface LabState {
  labDir: string;
  vms: LabStateVm[];
  guest?: { kernel: string; initramfs: string; key: string };
}

function labStateFile(labDir: string): string {
  return path.join(labDir, 'lab.json');
}

function readLabState(labDir: string): LabState | undefined {
  try {
    return JSON.parse(fs.readFileSync(labStateFile(labDir), 'utf8')) as LabState;
  } catch {
    return undefined;
  }
}

function writeLabState(labDir: string, st: LabState): void {
  const f = labStateFile(labDir);
  fs.writeFileSync(`${f}.tmp`, JSON.stringify(st, null, 2) + '\n');
  fs.renameSync(`${f}.tmp`, f);
}

// ---------------------------------------------------------------------------
// process checks

function qemuPid(p: LabVmPaths): number | undefined {
  const pid = readPidFile(p.pidFile);
  if (pid === undefined || !pidAlive(pid)) return undefined;
  const argv = pidCmdline(pid);
  if (!argv || !argv.some((a) => a.includes('qemu-system')) || !argv.includes(`guest=${p.name}`)) return undefined;
  return pid;
}

function nbdPid(p: LabVmPaths): number | undefined {
  const pid = readPidFile(p.nbdPidFile);
  if (pid === undefined || !pidAlive(pid)) return undefined;
  const argv = pidCmdline(pid);
  if (!argv || !argv.some((a) => a.includes('qemu-nbd'))) return undefined;
  return pid;
}

// ---------------------------------------------------------------------------
// disks

async function makeExt4Image(file: string, format: DiskFormat, sizeMiB: number, label: string): Promise<void> {
  mkdirp(path.dirname(file));
  const raw = format === 'raw' ? `${file}.tmp-${process.pid}` : `${file}.raw-tmp-${process.pid}`;
  rmf(raw);
  const fd = fs.openSync(raw, 'w');
  fs.ftruncateSync(fd, sizeMiB * 1024 * 1024);
  fs.closeSync(fd);
  try {
    await runOk('mkfs.ext4', ['-F', '-q', '-L', label, '-E', 'lazy_itable_init=0,lazy_journal_init=0', raw]);
    if (format === 'qcow2') {
      const tmp = `${file}.tmp-${process.pid}`;
      await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, tmp]);
      fs.renameSync(tmp, file);
    } else {
      fs.renameSync(raw, file);
    }
  } finally {
    rmf(raw);
  }
}

async function startNbd(p: LabVmPaths, log: (m: string) => void): Promise<number> {
  const existing = nbdPid(p);
  if (existing !== undefined && isSocket(p.nbdSocket)) return existing;
  if (existing !== undefined) process.kill(existing, 'SIGTERM');
  if (!exists(p.nbdImage)) await makeExt4Image(p.nbdImage, 'raw', 32, 'passthru');
  rmf(p.nbdSocket);
  rmf(p.nbdPidFile);
  const r = await run('qemu-nbd', [
    '--fork',
    '--persistent',
    '--shared=8',
    '--format=raw',
    '--cache=writeback',
    `--socket=${p.nbdSocket}`,
    `--pid-file=${p.nbdPidFile}`,
    p.nbdImage,
  ]);
  if (r.code !== 0) throw new Error(`lab: qemu-nbd failed for ${p.name}: ${r.stderr.trim()}`);
  const ok = await waitUntil(() => nbdPid(p) !== undefined && isSocket(p.nbdSocket), 10000, 100);
  if (!ok) throw new Error(`lab: qemu-nbd for ${p.name} did not come up (${p.nbdSocket})`);
  const pid = nbdPid(p)!;
  log(`lab: qemu-nbd pid ${pid} serving ${p.nbdImage} on ${p.nbdSocket}`);
  return pid;
}

// ---------------------------------------------------------------------------
// QEMU command line

export interface QemuArgsOptions {
  guest: Pick<GuestImage, 'kernel' | 'initramfs'>;
  memoryMiB?: number;
  rateMs?: number;
}

/** Full argv (without the program) for one lab VM. */
export function qemuArgs(spec: LabVmSpec, p: LabVmPaths, o: QemuArgsOptions): string[] {
  const append = [
    'console=ttyS0',
    'quiet',
    `lab.vm=${spec.name}`,
    `lab.agent=${spec.agent ? 1 : 0}`,
    `lab.rate_ms=${spec.rateMs ?? o.rateMs ?? 50}`,
    'lab.data_serial=data',
  ].join(' ');
  const args = [
    '-name',
    `guest=${spec.name}`,
    '-accel',
    'tcg,tb-size=128',
    '-machine',
    'pc',
    '-m',
    String(spec.memoryMiB ?? o.memoryMiB ?? 256),
    '-smp',
    '1',
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-daemonize',
    '-pidfile',
    p.pidFile,
    '-rtc',
    'base=utc',
    '-chardev',
    `socket,id=qmp,path=${p.qmpSocket},server=on,wait=off`,
    '-mon',
    'chardev=qmp,mode=control',
    '-serial',
    `file:${p.logFile}`,
    '-kernel',
    o.guest.kernel,
    '-initrd',
    o.guest.initramfs,
    '-append',
    append,
    '-device',
    'virtio-rng-pci,id=rng0',
    '-drive',
    `file=${p.dataImage},format=${p.dataFormat},if=none,id=drive-virtio0,cache=writeback,discard=unmap`,
    '-device',
    'virtio-blk-pci,drive=drive-virtio0,id=virtio0,serial=data,bootindex=100',
  ];
  if (spec.nbdDisk) {
    args.push(
      '-drive',
      `file.driver=nbd,file.server.type=unix,file.server.path=${p.nbdSocket},format=raw,if=none,id=drive-virtio1,cache=writeback`,
      '-device',
      'virtio-blk-pci,drive=drive-virtio1,id=virtio1,serial=passthrough',
    );
  }
  args.push(
    '-chardev',
    `socket,path=${p.qgaSocket},server=on,wait=off,id=qga0`,
    '-device',
    'virtio-serial,id=qga-serial0',
    '-device',
    `virtserialport,chardev=qga0,name=${QGA_PORT_NAME}`,
  );
  return args;
}

// ---------------------------------------------------------------------------
// start / stop / status

export interface StartLabOptions {
  labDir?: string;
  /** VM names from DEFAULT_VMS or full specs; default: all DEFAULT_VMS */
  vms?: ReadonlyArray<string | LabVmSpec>;
  /** data disk format for newly created disks (default: existing image's format, else qcow2) */
  dataFormat?: DiskFormat;
  dataSizeMiB?: number;
  memoryMiB?: number;
  rateMs?: number;
  /** check/install Debian packages first (default false; the CLI sets it) */
  install?: boolean;
  /** wait for agents (agent VMs) and workloads (default true) */
  wait?: boolean;
  /** per-VM wait budget (default 180 s) */
  timeoutMs?: number;
  log?: (msg: string) => void;
}

export interface StartedVm {
  name: string;
  pid: number;
  /** false if it was already running and left alone */
  started: boolean;
  agent: boolean;
  paths: LabVmPaths;
  /** ms from QEMU start until guest-sync answered (agent VMs, when started now) */
  agentReadyMs?: number;
  /** ms from QEMU start until the workload marker appeared (when started now) */
  workloadReadyMs?: number;
}

export interface StartLabResult {
  labDir: string;
  guest: GuestImage;
  vms: StartedVm[];
}

function resolveSpecs(vms?: ReadonlyArray<string | LabVmSpec>): LabVmSpec[] {
  if (!vms) return DEFAULT_VMS.map((v) => ({ ...v }));
  return vms.map((v) => {
    if (typeof v !== 'string') return { ...v };
    const d = DEFAULT_VMS.find((x) => x.name === v);
    if (!d) throw new Error(`lab: unknown VM ${v} (known: ${DEFAULT_VMS.map((x) => x.name).join(', ')})`);
    return { ...d };
  });
}

/**
 * Start the lab (idempotent: a VM whose pidfile process is alive is left
 * alone). Builds the guest if needed, creates missing disks, starts qemu-nbd
 * for VMs with an NBD disk, and (unless wait=false) waits until agents answer
 * and workloads run.
 */
export async function startLab(opts: StartLabOptions = {}): Promise<StartLabResult> {
  const labDir = path.resolve(opts.labDir ?? defaultLabDir());
  const log = opts.log ?? (() => undefined);
  const specs = resolveSpecs(opts.vms);
  if (opts.install) await installPackages({ log });
  mkdirp(path.join(labDir, 'images'));
  mkdirp(path.join(labDir, 'run'));
  const guest = await buildGuest({ labDir, log });

  const prev = readLabState(labDir);
  const state: LabState = {
    labDir,
    vms: prev?.vms.filter((v) => !specs.some((s) => s.name === v.name)) ?? [],
    guest: { kernel: guest.kernel, initramfs: guest.initramfs, key: guest.key },
  };

  const started: StartedVm[] = [];
  const startTimes = new Map<string, number>();
  for (const spec of specs) {
    const running = qemuPid(vmPaths(spec.name, labDir));
    const p = vmPaths(spec.name, labDir, running !== undefined ? undefined : opts.dataFormat);
    state.vms.push({ ...spec, dataFormat: p.dataFormat, startedAt: prev?.vms.find((v) => v.name === spec.name)?.startedAt });
    if (running !== undefined) {
      log(`lab: ${spec.name} already running (pid ${running})`);
      started.push({ name: spec.name, pid: running, started: false, agent: spec.agent, paths: p });
      continue;
    }
    if (!exists(p.dataImage)) {
      log(`lab: creating ${p.dataImage} (${p.dataFormat}, ext4, ${opts.dataSizeMiB ?? 128} MiB)`);
      await makeExt4Image(p.dataImage, p.dataFormat, opts.dataSizeMiB ?? 128, 'data');
    }
    if (spec.nbdDisk) await startNbd(p, log);
    for (const f of [p.qmpSocket, p.qgaSocket, p.pidFile]) rmf(f);
    if (exists(p.logFile)) fs.renameSync(p.logFile, `${p.logFile}.prev`);
    const args = qemuArgs(spec, p, { guest, memoryMiB: opts.memoryMiB, rateMs: opts.rateMs });
    const t0 = Date.now();
    const r = await run('qemu-system-x86_64', args, { timeoutMs: 60000 });
    if (r.code !== 0) {
      throw new Error(`lab: qemu-system-x86_64 for ${spec.name} exited ${r.code}: ${r.stderr.trim()}`);
    }
    const pid = readPidFile(p.pidFile);
    if (pid === undefined || !pidAlive(pid)) throw new Error(`lab: ${spec.name} did not stay up: ${r.stderr.trim()}`);
    startTimes.set(spec.name, t0);
    state.vms[state.vms.length - 1].startedAt = new Date(t0).toISOString();
    log(`lab: started ${spec.name} pid ${pid}${spec.agent ? '' : ' (no agent)'}${spec.nbdDisk ? ' (+nbd disk)' : ''}`);
    started.push({ name: spec.name, pid, started: true, agent: spec.agent, paths: p });
  }
  writeLabState(labDir, state);

  if (opts.wait !== false) {
    const timeoutMs = opts.timeoutMs ?? 180000;
    await Promise.all(
      started.map(async (vm) => {
        const t0 = startTimes.get(vm.name);
        const w = await waitForWorkload(vm.name, timeoutMs, labDir);
        if (t0 !== undefined) vm.workloadReadyMs = Date.now() - t0;
        if (vm.agent) {
          await waitForAgent(vm.name, timeoutMs, labDir);
          if (t0 !== undefined) vm.agentReadyMs = Date.now() - t0;
        }
        log(
          `lab: ${vm.name} ready` +
            (t0 !== undefined
              ? ` (workload after ${vm.workloadReadyMs} ms${vm.agent ? `, agent after ${vm.agentReadyMs} ms` : ''})`
              : ` (already running; workload marker found after ${w} ms)`),
        );
      }),
    );
  }
  return { labDir, guest, vms: started };
}

export interface StopLabOptions {
  /** try an ACPI power-down first so the guest syncs/unmounts /data (default true) */
  graceful?: boolean;
  /** per-VM budget for the graceful power-down (default 20 s) */
  gracefulTimeoutMs?: number;
  log?: (msg: string) => void;
}

function labVmNames(labDir: string): string[] {
  const names = new Set<string>((readLabState(labDir)?.vms ?? []).map((v) => v.name));
  try {
    for (const f of fs.readdirSync(path.join(labDir, 'run'))) {
      const m = /^(.*)\.pid$/.exec(f);
      if (m && !m[1].endsWith('-nbd')) names.add(m[1]);
    }
  } catch {
    /* no run dir */
  }
  return [...names].sort();
}

async function stopVm(p: LabVmPaths, o: StopLabOptions): Promise<void> {
  const log = o.log ?? (() => undefined);
  const pid = qemuPid(p);
  if (pid !== undefined) {
    let down = false;
    if (o.graceful !== false && isSocket(p.qmpSocket)) {
      try {
        await qmpCommand(p.qmpSocket, 'system_powerdown', undefined, 5000);
        down = await waitUntil(() => !pidAlive(pid), o.gracefulTimeoutMs ?? 20000, 200);
        if (down) log(`lab: ${p.name} powered off`);
      } catch {
        /* fall through */
      }
    }
    if (!down && isSocket(p.qmpSocket)) {
      try {
        await qmpCommand(p.qmpSocket, 'quit', undefined, 5000);
      } catch {
        /* the connection may drop before the reply */
      }
      down = await waitUntil(() => !pidAlive(pid), 10000, 100);
      if (down) log(`lab: ${p.name} stopped (QMP quit)`);
    }
    if (!down) {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        /* gone */
      }
      down = await waitUntil(() => !pidAlive(pid), 5000, 100);
      if (!down) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
        await waitUntil(() => !pidAlive(pid), 5000, 100);
      }
      log(`lab: ${p.name} stopped (signal)`);
    }
  }
  for (const f of [p.qmpSocket, p.qgaSocket, p.pidFile]) rmf(f);
  const npid = nbdPid(p);
  if (npid !== undefined) {
    try {
      process.kill(npid, 'SIGTERM');
    } catch {
      /* gone */
    }
    if (!(await waitUntil(() => !pidAlive(npid), 5000, 100))) {
      try {
        process.kill(npid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    log(`lab: qemu-nbd for ${p.name} stopped`);
  }
  rmf(p.nbdSocket);
  rmf(p.nbdPidFile);
}

/** Stop every lab VM (graceful ACPI power-down, then QMP quit, then signals) and the NBD servers. */
export async function stopLab(labDir: string = defaultLabDir(), opts: StopLabOptions = {}): Promise<void> {
  const dir = path.resolve(labDir);
  await Promise.all(labVmNames(dir).map((n) => stopVm(vmPaths(n, dir), opts)));
}

export interface LabVmStatus {
  name: string;
  agent: boolean | undefined;
  pid: number | null;
  alive: boolean;
  qmpSocket: string;
  qmpSocketExists: boolean;
  qgaSocket: string;
  qgaSocketExists: boolean;
  logFile: string;
  dataImage: string;
  dataFormat: DiskFormat;
  nbd?: { pid: number | null; alive: boolean; socket: string; socketExists: boolean; image: string };
  /** filled by probeLab() */
  qmpStatus?: string;
  agentAnswers?: boolean;
}

export interface LabStatus {
  labDir: string;
  guest?: LabState['guest'];
  vms: LabVmStatus[];
}

/** Static status from pidfiles and sockets (no guest interaction). */
export function labStatus(labDir: string = defaultLabDir()): LabStatus {
  const dir = path.resolve(labDir);
  const state = readLabState(dir);
  const names = labVmNames(dir);
  for (const d of DEFAULT_VMS) if (!names.includes(d.name) && !state) names.push(d.name);
  const vms = names.map((name): LabVmStatus => {
    const p = vmPaths(name, dir);
    const spec = state?.vms.find((v) => v.name === name) ?? DEFAULT_VMS.find((v) => v.name === name);
    const pid = qemuPid(p);
    const s: LabVmStatus = {
      name,
      agent: spec?.agent,
      pid: pid ?? readPidFile(p.pidFile) ?? null,
      alive: pid !== undefined,
      qmpSocket: p.qmpSocket,
      qmpSocketExists: isSocket(p.qmpSocket),
      qgaSocket: p.qgaSocket,
      qgaSocketExists: isSocket(p.qgaSocket),
      logFile: p.logFile,
      dataImage: p.dataImage,
      dataFormat: p.dataFormat,
    };
    if (spec?.nbdDisk) {
      const npid = nbdPid(p);
      s.nbd = {
        pid: npid ?? readPidFile(p.nbdPidFile) ?? null,
        alive: npid !== undefined,
        socket: p.nbdSocket,
        socketExists: isSocket(p.nbdSocket),
        image: p.nbdImage,
      };
    }
    return s;
  });
  return { labDir: dir, guest: state?.guest, vms };
}

/** labStatus() plus QMP query-status and a guest-sync probe per VM. */
export async function probeLab(labDir: string = defaultLabDir(), agentTimeoutMs = 3000): Promise<LabStatus> {
  const st = labStatus(labDir);
  await Promise.all(
    st.vms.map(async (v) => {
      if (!v.alive) return;
      try {
        const r = await qmpCommand(v.qmpSocket, 'query-status', undefined, 3000);
        v.qmpStatus = String(r?.status);
      } catch (e) {
        v.qmpStatus = `error: ${(e as Error).message}`;
      }
      v.agentAnswers = v.qgaSocketExists ? await qgaPing(v.qgaSocket, agentTimeoutMs) : false;
    }),
  );
  return st;
}

// ---------------------------------------------------------------------------
// waiting

function pathsOf(vm: string | LabVmPaths, labDir?: string): LabVmPaths {
  return typeof vm === 'string' ? vmPaths(vm, labDir ?? defaultLabDir()) : vm;
}

/**
 * Wait until the VM's guest agent answers a guest-sync handshake on
 * run/<vm>.qga; retries (new connection, new id) until `timeoutMs`.
 * Resolves with the ms waited.
 */
export async function waitForAgent(vm: string | LabVmPaths, timeoutMs = 180000, labDir?: string): Promise<number> {
  const p = pathsOf(vm, labDir);
  const t0 = Date.now();
  const deadline = t0 + timeoutMs;
  let lastErr = '';
  while (Date.now() < deadline) {
    if (qemuPid(p) === undefined) throw new Error(`lab: ${p.name} is not running (see ${p.logFile})`);
    if (isSocket(p.qgaSocket)) {
      try {
        const s = await QgaSession.open(p.qgaSocket, Math.min(3000, Math.max(500, deadline - Date.now())));
        s.close();
        return Date.now() - t0;
      } catch (e) {
        lastErr = (e as Error).message;
      }
    }
    await sleep(250);
  }
  throw new Error(
    `lab: guest agent of ${p.name} did not answer within ${timeoutMs} ms (${lastErr}); console tail:\n${tailFile(p.logFile, 1500)}`,
  );
}

export const WORKLOAD_MARKER = 'LAB-WORKLOAD-STARTED';

/** Wait until the serial console shows the workload-started marker. Resolves with the ms waited. */
export async function waitForWorkload(vm: string | LabVmPaths, timeoutMs = 180000, labDir?: string): Promise<number> {
  const p = pathsOf(vm, labDir);
  const t0 = Date.now();
  const ok = await waitUntil(
    () => {
      if (qemuPid(p) === undefined) throw new Error(`lab: ${p.name} is not running; console tail:\n${tailFile(p.logFile, 1500)}`);
      try {
        const txt = fs.readFileSync(p.logFile, 'latin1');
        if (/LAB-ERROR/.test(txt)) {
          throw new Error(`lab: ${p.name} guest reported an error; console tail:\n${tailFile(p.logFile, 1500)}`);
        }
        return txt.includes(WORKLOAD_MARKER);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
        throw e;
      }
    },
    timeoutMs,
    250,
  );
  if (!ok) throw new Error(`lab: workload of ${p.name} did not start within ${timeoutMs} ms; console tail:\n${tailFile(p.logFile, 1500)}`);
  return Date.now() - t0;
}

// ---------------------------------------------------------------------------
// reading records.log

/**
 * Read a file from the data disk image offline: `qemu-img convert -U` to a
 * temporary raw copy, replay the ext4 journal on the copy
 * (`e2fsck -E journal_only`), then `debugfs -R 'cat <file>'`. Works while
 * the VM runs (the copy is crash-consistent at best).
 */
export async function readDataFileOffline(vm: string | LabVmPaths, file = '/records.log', labDir?: string): Promise<Buffer> {
  const p = pathsOf(vm, labDir);
  const tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'lab-read-'));
  const raw = path.join(tmpDir, 'data.raw');
  try {
    await runOk('qemu-img', ['convert', '-U', '-f', p.dataFormat, '-O', 'raw', p.dataImage, raw]);
    await run('e2fsck', ['-E', 'journal_only', '-y', raw]);
    return await execFileBuffer('debugfs', ['-R', `cat ${file}`, raw]);
  } finally {
    fs.rmSync(tmpDir, { recursive: true, force: true });
  }
}

/** Read a guest file through the guest agent (guest-file-open/read/close). */
export async function readGuestFileViaAgent(vm: string | LabVmPaths, file: string, labDir?: string, timeoutMs = 10000): Promise<Buffer> {
  const p = pathsOf(vm, labDir);
  const s = await QgaSession.open(p.qgaSocket, timeoutMs);
  try {
    const handle = await s.execute('guest-file-open', { path: file, mode: 'r' }, timeoutMs);
    const parts: Buffer[] = [];
    try {
      for (;;) {
        const r = await s.execute('guest-file-read', { handle, count: 1024 * 1024 }, timeoutMs);
        parts.push(Buffer.from(String(r['buf-b64'] ?? ''), 'base64'));
        if (r.eof || r.count === 0) break;
      }
    } finally {
      await s.execute('guest-file-close', { handle }, timeoutMs).catch(() => undefined);
    }
    return Buffer.concat(parts);
  } finally {
    s.close();
  }
}

/** Verify the records of a VM's data disk read offline from its image. */
export async function verifyVmRecords(vm: string | LabVmPaths, labDir?: string): Promise<RecordsVerification> {
  return verifyRecords(await readDataFileOffline(vm, '/records.log', labDir));
}
