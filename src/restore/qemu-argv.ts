// A new VM's QEMU command line, derived from the one the backup recorded (definition.json
// `commandLine`): the same machine, memory, CPUs and devices, with the restored disks, its own
// name, sockets, pidfile, console log, UUID and MACs, so that it never shares anything with the
// original. Pure: the caller decides the files; tested in test/unit/restore/qemu-argv.test.ts.
import { randomBytes, randomUUID } from 'node:crypto';
import * as path from 'node:path';

/** QEMU options that take no value (everything else starting with - takes one). */
const FLAGS = new Set([
  '-daemonize',
  '-nodefaults',
  '-no-user-config',
  '-enable-kvm',
  '-no-reboot',
  '-no-shutdown',
  '-S',
  '-snapshot',
  '-nographic',
  '-no-hpet',
  '-no-acpi',
  '-full-screen',
  '-no-quit',
  '-s',
  '-usb',
  '-win2k-hack',
  '-no-fd-bootchk',
  '-enable-fips',
  '-only-migratable',
  '-preconfig',
]);

/** One option of a QEMU command line: `-name value` or a flag. */
export interface QemuOption {
  name: string;
  value?: string;
}

/** `a=b,c=d` with QEMU's `,,` for a comma inside a value; a part without `=` has key '' (e.g. the backend). */
export type KeyValues = [string, string | undefined][];

export function parseKeyValues(s: string): KeyValues {
  const parts: string[] = [];
  let cur = '';
  for (let i = 0; i < s.length; i++) {
    if (s[i] === ',') {
      if (s[i + 1] === ',') {
        cur += ',';
        i++;
        continue;
      }
      parts.push(cur);
      cur = '';
    } else cur += s[i];
  }
  parts.push(cur);
  return parts.map((p) => {
    const eq = p.indexOf('=');
    return eq < 0 ? [p, undefined] : [p.slice(0, eq), p.slice(eq + 1)];
  });
}

export function formatKeyValues(kv: KeyValues): string {
  const esc = (s: string) => s.replace(/,/g, ',,');
  return kv.map(([k, v]) => (v === undefined ? esc(k) : `${k}=${esc(v)}`)).join(',');
}

export function getKey(kv: KeyValues, key: string): string | undefined {
  return kv.find(([k]) => k === key)?.[1];
}

function setKey(kv: KeyValues, key: string, value: string): KeyValues {
  const i = kv.findIndex(([k]) => k === key);
  if (i >= 0) kv[i] = [key, value];
  else kv.push([key, value]);
  return kv;
}

function dropKey(kv: KeyValues, key: string): KeyValues {
  return kv.filter(([k]) => k !== key);
}

export function splitOptions(argv: readonly string[]): QemuOption[] {
  const out: QemuOption[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('-')) throw new Error(`commandLine: "${a.slice(0, 80)}" at ${i} is not an option`);
    const name = a.startsWith('--') ? a.slice(1) : a;
    if (FLAGS.has(name) || i + 1 >= argv.length) out.push({ name });
    else out.push({ name, value: argv[++i] });
  }
  return out;
}

export function joinOptions(opts: readonly QemuOption[]): string[] {
  return opts.flatMap((o) => (o.value === undefined ? [o.name] : [o.name, o.value]));
}

/** A locally administered unicast MAC in QEMU's own prefix range (52:54:00 is QEMU's). */
export function newMac(): string {
  const b = randomBytes(3);
  return ['52', '54', '00', ...[...b].map((x) => x.toString(16).padStart(2, '0'))].join(':');
}

export interface RestoredDrive {
  file: string;
  format: 'qcow2' | 'raw';
  /** open it read-only (the boot test's backing is read-only anyway; its overlay is not) */
  readOnly?: boolean;
}

export interface QemuPlan {
  /** the new VM's name (-name guest=) */
  name: string;
  /** where its sockets, pidfile and console log go */
  runDir: string;
  /** per drive id (the manifest's disk id): the restored image */
  drives: ReadonlyMap<string, RestoredDrive>;
  /** original image path -> restored image, for -blockdev nodes that name files */
  images?: ReadonlyMap<string, string>;
  /** 'keep': same backends with new MACs (a tap's ifname dropped); 'none': no network at all */
  network: 'keep' | 'none';
  /** replace the accelerator (the boot test: tcg or kvm); undefined keeps the original's */
  accel?: string;
  /** -incoming defer: a saved state is fed in through QMP migrate-incoming */
  incoming?: boolean;
  /** -S: created with its vCPUs stopped */
  paused?: boolean;
  /** run in the foreground (no -daemonize): the caller supervises the process itself */
  foreground?: boolean;
}

export interface QemuLaunch {
  /** the argument vector (without the program) */
  args: string[];
  program: string;
  qmpSocket: string;
  /** the guest agent's socket, when the VM has an agent channel */
  qgaSocket?: string;
  pidFile: string;
  consoleLog: string;
  uuid: string;
  macs: string[];
  /** drives of the original not started (their disk was not restored: pass-through, network) */
  dropped: string[];
}

const NIC_DEVICE = /(^|-)net-|^e1000|^rtl8139|^virtio-net|^vmxnet|^ne2k|^pcnet|^i8255|^igb|^usb-net/;

/**
 * Rewrite `commandLine` (argv[0] the program) for a new VM. Refuses (throws naming
 * commandLine) what it cannot make safe: a QEMU without its command line, or a drive that is
 * neither restored nor droppable.
 */
export function rewriteCommandLine(commandLine: unknown, plan: QemuPlan): QemuLaunch {
  if (!Array.isArray(commandLine) || commandLine.length < 2 || !commandLine.every((a) => typeof a === 'string'))
    throw new Error('commandLine: the backup holds no QEMU command line (the VM was not running, or its process was not found)');
  const [program, ...rest] = commandLine as string[];
  const opts = splitOptions(rest);
  const run = (f: string) => path.join(plan.runDir, f);
  const qmpSocket = run(`${plan.name}.qmp`);
  const pidFile = run(`${plan.name}.pid`);
  const consoleLog = run(`${plan.name}.log`);
  const uuid = randomUUID();
  const macs: string[] = [];
  const dropped: string[] = [];

  // the chardevs: which is the QMP monitor, which the guest agent channel
  const monitors = new Set<string>();
  const agentChardevs = new Set<string>();
  for (const o of opts) {
    if (o.name === '-mon' && o.value) {
      const kv = parseKeyValues(o.value);
      if (getKey(kv, 'mode') === 'control' && getKey(kv, 'chardev')) monitors.add(getKey(kv, 'chardev')!);
    }
    if (o.name === '-device' && o.value) {
      const kv = parseKeyValues(o.value);
      if (kv[0][0] === 'virtserialport' && getKey(kv, 'name') === 'org.qemu.guest_agent.0' && getKey(kv, 'chardev'))
        agentChardevs.add(getKey(kv, 'chardev')!);
    }
  }
  // drives not restored (excluded, not selected) go with the devices that use them
  const droppedDrives = new Set<string>();
  for (const o of opts) {
    if (o.name !== '-drive' || !o.value) continue;
    const kv = parseKeyValues(o.value);
    const id = getKey(kv, 'id');
    const media = getKey(kv, 'media');
    if (id && plan.drives.has(id)) continue;
    if (media === 'cdrom' || getKey(kv, 'readonly') === 'on') continue; // read-only media are shared safely
    if (!getKey(kv, 'file') && !kv.some(([k]) => k.startsWith('file.'))) continue; // an empty drive
    droppedDrives.add(id ?? '');
    dropped.push(id ?? getKey(kv, 'file') ?? '?');
  }
  let qgaSocket: string | undefined;
  let hasQmp = false;
  let hasPidfile = false;
  let hasDaemonize = false;
  const out: QemuOption[] = [];
  for (const o of opts) {
    const v = o.value;
    switch (o.name) {
      case '-name': {
        const kv = parseKeyValues(v ?? '');
        if (kv[0][1] === undefined) kv[0] = ['guest', plan.name];
        else setKey(kv, 'guest', plan.name);
        out.push({ name: o.name, value: formatKeyValues(kv) });
        continue;
      }
      case '-pidfile':
        hasPidfile = true;
        out.push({ name: o.name, value: pidFile });
        continue;
      case '-daemonize':
        hasDaemonize = true;
        if (!plan.foreground) out.push(o);
        continue;
      case '-uuid':
        out.push({ name: o.name, value: uuid });
        continue;
      case '-smbios': {
        const kv = parseKeyValues(v ?? '');
        if (getKey(kv, 'uuid') !== undefined) setKey(kv, 'uuid', uuid);
        out.push({ name: o.name, value: formatKeyValues(kv) });
        continue;
      }
      case '-chardev': {
        const kv = parseKeyValues(v ?? '');
        const id = getKey(kv, 'id') ?? '';
        if (getKey(kv, 'path') !== undefined) {
          let file = run(`${plan.name}.${safePart(id)}.sock`);
          if (monitors.has(id)) {
            file = qmpSocket;
            hasQmp = true;
          } else if (agentChardevs.has(id)) {
            file = run(`${plan.name}.qga`);
            qgaSocket = file;
          } else if (kv[0][0] === 'file') file = run(`${plan.name}.${safePart(id)}.log`);
          setKey(kv, 'path', file);
        }
        if (getKey(kv, 'logfile') !== undefined) setKey(kv, 'logfile', run(`${plan.name}.${safePart(id)}.chardev.log`));
        out.push({ name: o.name, value: formatKeyValues(kv) });
        continue;
      }
      case '-qmp':
      case '-monitor':
      case '-serial':
      case '-parallel': {
        const value = v ?? '';
        if (value.startsWith('unix:')) {
          const rest = value.slice(5).split(',').slice(1);
          const file = o.name === '-qmp' ? qmpSocket : run(`${plan.name}${o.name}.sock`);
          if (o.name === '-qmp') hasQmp = true;
          out.push({ name: o.name, value: ['unix:' + file, ...rest].join(',') });
        } else if (value.startsWith('file:'))
          out.push({ name: o.name, value: `file:${o.name === '-serial' ? consoleLog : run(`${plan.name}${o.name}.log`)}` });
        else out.push(o);
        continue;
      }
      case '-D':
        out.push({ name: o.name, value: run(`${plan.name}.qemu.log`) });
        continue;
      case '-vnc':
        out.push({ name: o.name, value: v === 'none' ? 'none' : `unix:${run(`${plan.name}.vnc`)}` });
        continue;
      case '-drive': {
        const kv = parseKeyValues(v ?? '');
        const id = getKey(kv, 'id') ?? '';
        if (droppedDrives.has(id)) continue;
        const drive = plan.drives.get(id);
        if (drive) {
          // file.* (a protocol driver's options) and snapshot go; file and format change in place
          const at = kv.findIndex(([k]) => k === 'file' || k.startsWith('file.'));
          let next = kv.filter(([k]) => !k.startsWith('file.') && k !== 'file' && k !== 'format' && k !== 'snapshot');
          next.splice(Math.max(0, at), 0, ['file', drive.file], ['format', drive.format]);
          if (drive.readOnly) next = setKey(next, 'readonly', 'on');
          out.push({ name: o.name, value: formatKeyValues(next) });
        } else out.push(o);
        continue;
      }
      case '-blockdev':
        out.push({ name: o.name, value: rewriteBlockdev(v ?? '', plan) });
        continue;
      case '-device': {
        const kv = parseKeyValues(v ?? '');
        const drive = getKey(kv, 'drive');
        if (drive !== undefined && droppedDrives.has(drive)) continue;
        if (getKey(kv, 'netdev') !== undefined || NIC_DEVICE.test(kv[0][0])) {
          if (plan.network === 'none') continue;
          const mac = newMac();
          macs.push(mac);
          out.push({ name: o.name, value: formatKeyValues(setKey(kv, 'mac', mac)) });
        } else out.push(o);
        continue;
      }
      case '-netdev': {
        if (plan.network === 'none') continue;
        out.push({ name: o.name, value: formatKeyValues(dropKey(parseKeyValues(v ?? ''), 'ifname')) });
        continue;
      }
      case '-nic':
      case '-net': {
        if (plan.network === 'none') continue;
        let kv = dropKey(parseKeyValues(v ?? ''), 'ifname');
        if (kv[0][0] !== 'none') {
          const mac = newMac();
          macs.push(mac);
          kv = setKey(kv, o.name === '-nic' ? 'mac' : 'macaddr', mac);
        }
        out.push({ name: o.name, value: formatKeyValues(kv) });
        continue;
      }
      case '-accel':
        if (plan.accel) continue;
        out.push(o);
        continue;
      case '-enable-kvm':
        if (plan.accel) continue;
        out.push(o);
        continue;
      case '-machine':
      case '-M': {
        const kv = parseKeyValues(v ?? '');
        out.push({ name: o.name, value: plan.accel ? formatKeyValues(dropKey(kv, 'accel')) : v! });
        continue;
      }
      case '-incoming':
      case '-loadvm':
        continue; // the original's own, if any; ours is added below
      case '-S':
        continue;
      default:
        out.push(o);
    }
  }
  if (!hasQmp)
    out.push(
      { name: '-chardev', value: `socket,id=vmb-qmp,path=${qmpSocket},server=on,wait=off` },
      { name: '-mon', value: 'chardev=vmb-qmp,mode=control' },
    );
  if (!hasPidfile) out.push({ name: '-pidfile', value: pidFile });
  if (!hasDaemonize && !plan.foreground) out.push({ name: '-daemonize' });
  if (plan.accel) out.push({ name: '-accel', value: plan.accel });
  if (plan.network === 'none') out.push({ name: '-nic', value: 'none' });
  if (plan.incoming) out.push({ name: '-incoming', value: 'defer' });
  if (plan.paused) out.push({ name: '-S' });
  return {
    args: joinOptions(out),
    program,
    qmpSocket,
    ...(qgaSocket ? { qgaSocket } : {}),
    pidFile,
    consoleLog,
    uuid,
    macs,
    dropped,
  };
}

function safePart(s: string): string {
  return s.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 40) || 'dev';
}

/** -blockdev as JSON or key=value: a file node naming an original image gets the restored one. */
function rewriteBlockdev(value: string, plan: QemuPlan): string {
  const images = plan.images ?? new Map<string, string>();
  if (value.trimStart().startsWith('{')) {
    const node = JSON.parse(value) as Record<string, unknown>;
    const swap = (o: Record<string, unknown>) => {
      if (typeof o.filename === 'string' && images.has(o.filename)) o.filename = images.get(o.filename);
      if (o.file && typeof o.file === 'object') swap(o.file as Record<string, unknown>);
    };
    swap(node);
    return JSON.stringify(node);
  }
  const kv = parseKeyValues(value);
  for (const entry of kv)
    if ((entry[0] === 'filename' || entry[0] === 'file.filename') && entry[1] && images.has(entry[1])) entry[1] = images.get(entry[1]);
  return formatKeyValues(kv);
}

/** The drive ids of a command line and each one's image file (file= of -drive), for mapping disks. */
export function driveFiles(commandLine: readonly string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const o of splitOptions(commandLine.slice(1))) {
    if (o.name !== '-drive' || !o.value) continue;
    const kv = parseKeyValues(o.value);
    const id = getKey(kv, 'id');
    const file = getKey(kv, 'file');
    if (id && file) out.set(id, file);
  }
  return out;
}
