/**
 * Tiny lab guest: a Debian kernel from the host plus a generated initramfs
 * (cpio newc, gzip) holding busybox-static, qemu-ga (+ its shared libraries
 * and the dynamic loader), the virtio / ext4 kernel modules and an /init.
 *
 * The guest's role is chosen on the kernel command line:
 *   lab.vm=<name>          name printed in console markers
 *   lab.agent=1|0          start qemu-ga on the org.qemu.guest_agent.0 port or not
 *   lab.rate_ms=<ms>       workload record period (default 50)
 *   lab.data_serial=<s>    virtio-blk serial of the data disk (default "data")
 *
 * Boot flow: /init mounts proc/sys/devtmpfs, insmods modules in dependency
 * order, mounts the data disk (found by its virtio serial) at /data, writes an
 * /etc/inittab and execs busybox init, which respawns the workload (and
 * qemu-ga, acpid). Busybox init handles `poweroff`, `reboot`, the ACPI power
 * button (QMP system_powerdown) and qemu-ga's guest-shutdown (/sbin/shutdown).
 *
 * Console markers (serial log) the host can wait for:
 *   LAB-BOOT vm=<name> uptime=<s>
 *   LAB-DATA-MOUNTED dev=/dev/vdX
 *   LAB-AGENT-PORT path=/dev/vportNpM       (agent role only)
 *   LAB-WORKLOAD-STARTED vm=<name> seq=<n>
 *   LAB-FSFREEZE freeze|thaw                (qemu-ga fsfreeze hook)
 *   LAB-SHUTDOWN
 *
 * Workload: /data/records.log gets one line every rate_ms:
 *   <seq> <ts_ms> <payload: 64 hex chars> <checksum: 8 hex chars>\n
 * checksum = FNV-1a-style 32-bit fold over the 32-bit words
 *   [seq, ts_ms & 0xffffffff, ts_ms >>> 32 (as 32-bit), p0..p7] (p = payload words)
 * i.e. h = 2166136261; for each w: h = ((h ^ w) * 16777619) mod 2^32.
 * Each line is written with one write(2) by the busybox printf builtin.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { execFileBuffer, mkdirp, run, runOk } from './util';

/** Bump when the layout / scripts change in a way the content hash would not see. */
const BUILDER_VERSION = 'lab-guest-v1';

export const QGA_PORT_NAME = 'org.qemu.guest_agent.0';

/** Modules we want in the guest; dependencies are added from `modinfo -F depends`. */
const REQUIRED_MODULES = ['virtio_pci', 'virtio_blk', 'virtio_console', 'crc32c_generic', 'ext4'];
/** Nice to have: entropy (virtio-rng) and the ACPI power button (system_powerdown). */
const OPTIONAL_MODULES = ['virtio_rng', 'evdev', 'button'];
/** Preferred relative order (dependencies always come first anyway). */
const MODULE_ORDER_HINT = [
  'virtio_ring',
  'virtio',
  'virtio_pci_modern_dev',
  'virtio_pci_legacy_dev',
  'virtio_pci',
  'virtio_blk',
  'virtio_console',
  'virtio_rng',
  'crc16',
  'mbcache',
  'jbd2',
  'crc32c_generic',
  'ext4',
  'evdev',
  'button',
];

// ---------------------------------------------------------------------------
// Lab directory helpers

export const DEFAULT_LAB_DIR = '/tmp/vm-backup-lab';

export function defaultLabDir(): string {
  return process.env.VMBACKUP_LAB_DIR || DEFAULT_LAB_DIR;
}

// ---------------------------------------------------------------------------
// Kernel selection

export interface KernelInfo {
  version: string;
  vmlinuz: string;
  modulesDir: string;
}

function compareVersions(a: string, b: string): number {
  const pa = a.split(/[.-]/);
  const pb = b.split(/[.-]/);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i] ?? '';
    const y = pb[i] ?? '';
    const nx = /^\d+$/.test(x) ? parseInt(x, 10) : NaN;
    const ny = /^\d+$/.test(y) ? parseInt(y, 10) : NaN;
    if (!Number.isNaN(nx) && !Number.isNaN(ny)) {
      if (nx !== ny) return nx - ny;
    } else if (x !== y) {
      return x < y ? -1 : 1;
    }
  }
  return 0;
}

/**
 * Pick the guest kernel: the newest /boot/vmlinuz-<v> that has
 * /lib/modules/<v>. (The host's running kernel is irrelevant.) Override with
 * env VMBACKUP_LAB_KVER.
 */
export function findKernel(kver: string | undefined = process.env.VMBACKUP_LAB_KVER): KernelInfo {
  let candidates: string[];
  if (kver) {
    candidates = [kver];
  } else {
    candidates = fs
      .readdirSync('/boot')
      .filter((f) => f.startsWith('vmlinuz-'))
      .map((f) => f.slice('vmlinuz-'.length))
      .filter((v) => fs.existsSync(`/lib/modules/${v}/modules.dep`))
      .sort(compareVersions)
      .reverse();
  }
  for (const v of candidates) {
    const vmlinuz = `/boot/vmlinuz-${v}`;
    const modulesDir = `/lib/modules/${v}`;
    if (fs.existsSync(vmlinuz) && fs.existsSync(modulesDir)) return { version: v, vmlinuz, modulesDir };
  }
  throw new Error(`lab: no usable kernel (need /boot/vmlinuz-<v> and /lib/modules/<v>); install linux-image-amd64`);
}

// ---------------------------------------------------------------------------
// Kernel modules

export interface GuestModule {
  name: string;
  /** file on the host (may be .ko, .ko.xz, .ko.zst, .ko.gz) */
  hostFile: string;
  depends: string[];
}

async function modinfoField(kver: string, mod: string, field: string): Promise<string | undefined> {
  const r = await run('modinfo', ['-k', kver, '-F', field, mod]);
  if (r.code !== 0) return undefined;
  return r.stdout.trim();
}

function isBuiltin(kernel: KernelInfo, mod: string): boolean {
  try {
    const txt = fs.readFileSync(path.join(kernel.modulesDir, 'modules.builtin'), 'utf8');
    const want = mod.replace(/-/g, '_');
    return txt.split('\n').some(
      (l) =>
        path
          .basename(l)
          .replace(/\.ko.*$/, '')
          .replace(/-/g, '_') === want,
    );
  } catch {
    return false;
  }
}

/**
 * Resolve modules and their dependencies (`modinfo -F depends`), in load
 * order. Built-in modules are skipped; a missing required module is an error,
 * a missing optional one is skipped.
 */
export async function resolveModules(
  kernel: KernelInfo,
  required: readonly string[] = REQUIRED_MODULES,
  optional: readonly string[] = OPTIONAL_MODULES,
): Promise<{ modules: GuestModule[]; builtin: string[]; skipped: string[] }> {
  const info = new Map<string, GuestModule>();
  const builtin: string[] = [];
  const skipped: string[] = [];

  const visit = async (name: string, isRequired: boolean): Promise<boolean> => {
    const n = name.replace(/-/g, '_');
    if (info.has(n) || builtin.includes(n)) return true;
    const filename = await modinfoField(kernel.version, n, 'filename');
    if (filename === undefined || filename === '') {
      if (isBuiltin(kernel, n)) {
        builtin.push(n);
        return true;
      }
      if (isRequired) throw new Error(`lab: kernel module ${n} not found for ${kernel.version}`);
      skipped.push(n);
      return false;
    }
    if (filename === '(builtin)') {
      builtin.push(n);
      return true;
    }
    const depsRaw = (await modinfoField(kernel.version, n, 'depends')) ?? '';
    const depends = depsRaw
      .split(',')
      .map((s) => s.trim().replace(/-/g, '_'))
      .filter((s) => s.length > 0);
    info.set(n, { name: n, hostFile: filename, depends });
    for (const d of depends) await visit(d, true);
    return true;
  };

  for (const m of required) await visit(m, true);
  for (const m of optional) await visit(m, false);

  // Topological sort, ties broken by MODULE_ORDER_HINT then name.
  const rank = (n: string): number => {
    const i = MODULE_ORDER_HINT.indexOf(n);
    return i < 0 ? MODULE_ORDER_HINT.length : i;
  };
  const remaining = new Set(info.keys());
  const ordered: GuestModule[] = [];
  while (remaining.size > 0) {
    const ready = [...remaining]
      .filter((n) => info.get(n)!.depends.every((d) => !remaining.has(d)))
      .sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
    if (ready.length === 0) throw new Error(`lab: module dependency cycle among ${[...remaining].join(',')}`);
    const next = ready[0];
    ordered.push(info.get(next)!);
    remaining.delete(next);
  }
  return { modules: ordered, builtin, skipped };
}

/** Module contents as a plain .ko (decompressing .xz/.zst/.gz on the host). */
async function moduleBytes(m: GuestModule): Promise<Buffer> {
  const f = m.hostFile;
  if (f.endsWith('.ko')) return fs.readFileSync(f);
  if (f.endsWith('.ko.gz')) return zlib.gunzipSync(fs.readFileSync(f));
  let prog: string;
  if (f.endsWith('.ko.xz')) prog = 'xz';
  else if (f.endsWith('.ko.zst')) prog = 'zstd';
  else throw new Error(`lab: unsupported module file ${f}`);
  try {
    return await execFileBuffer(prog, ['-dc', f]);
  } catch (e) {
    throw new Error(`lab: ${prog} -dc ${f} failed: ${(e as Error).message}`);
  }
}

// ---------------------------------------------------------------------------
// Shared libraries of qemu-ga

/** Absolute paths `ldd` lists (including the dynamic loader, excluding the vDSO). */
export async function sharedLibraries(binary: string): Promise<string[]> {
  const r = await runOk('ldd', [binary]);
  const libs: string[] = [];
  for (const line of r.stdout.split('\n')) {
    const arrow = line.match(/=>\s+(\/\S+)/);
    const direct = line.match(/^\s*(\/\S+)\s+\(/);
    const p = arrow?.[1] ?? direct?.[1];
    if (p && !libs.includes(p)) libs.push(p);
  }
  if (libs.length === 0) throw new Error(`lab: ldd listed no libraries for ${binary}`);
  return libs;
}

// ---------------------------------------------------------------------------
// cpio (newc) writer

type Entry =
  | { kind: 'dir'; path: string; mode: number }
  | { kind: 'file'; path: string; mode: number; data: Buffer }
  | { kind: 'symlink'; path: string; target: string }
  | { kind: 'chardev'; path: string; mode: number; major: number; minor: number };

class CpioBuilder {
  private entries = new Map<string, Entry>();

  private norm(p: string): string {
    return path.posix.normalize(p).replace(/^\/+/, '');
  }

  private ensureParents(p: string): void {
    const parts = p.split('/');
    for (let i = 1; i < parts.length; i++) {
      const d = parts.slice(0, i).join('/');
      if (!this.entries.has(d)) this.entries.set(d, { kind: 'dir', path: d, mode: 0o755 });
    }
  }

  dir(p: string, mode = 0o755): void {
    const n = this.norm(p);
    this.ensureParents(n);
    this.entries.set(n, { kind: 'dir', path: n, mode });
  }

  file(p: string, data: Buffer | string, mode = 0o644): void {
    const n = this.norm(p);
    this.ensureParents(n);
    this.entries.set(n, { kind: 'file', path: n, mode, data: Buffer.isBuffer(data) ? data : Buffer.from(data) });
  }

  symlink(p: string, target: string): void {
    const n = this.norm(p);
    this.ensureParents(n);
    if (!this.entries.has(n)) this.entries.set(n, { kind: 'symlink', path: n, target });
  }

  chardev(p: string, major: number, minor: number, mode = 0o600): void {
    const n = this.norm(p);
    this.ensureParents(n);
    this.entries.set(n, { kind: 'chardev', path: n, mode, major, minor });
  }

  has(p: string): boolean {
    return this.entries.has(this.norm(p));
  }

  /** Deterministic archive: sorted names, uid/gid 0, mtime 0. */
  build(): Buffer {
    const chunks: Buffer[] = [];
    const pad4 = (n: number): Buffer => Buffer.alloc((4 - (n % 4)) % 4);
    const hex = (n: number): string => n.toString(16).padStart(8, '0');
    let ino = 1;
    const emit = (name: string, mode: number, nlink: number, data: Buffer, rmaj = 0, rmin = 0): void => {
      const nameBuf = Buffer.from(name + '\0');
      const header =
        '070701' +
        hex(ino++) +
        hex(mode) +
        hex(0) + // uid
        hex(0) + // gid
        hex(nlink) +
        hex(0) + // mtime
        hex(data.length) +
        hex(0) + // devmajor
        hex(0) + // devminor
        hex(rmaj) +
        hex(rmin) +
        hex(nameBuf.length) +
        hex(0); // check
      chunks.push(Buffer.from(header, 'ascii'), nameBuf, pad4(110 + nameBuf.length));
      chunks.push(data, pad4(data.length));
    };
    const names = [...this.entries.keys()].sort();
    for (const n of names) {
      const e = this.entries.get(n)!;
      switch (e.kind) {
        case 'dir':
          emit(n, 0o040000 | e.mode, 2, Buffer.alloc(0));
          break;
        case 'file':
          emit(n, 0o100000 | e.mode, 1, e.data);
          break;
        case 'symlink':
          emit(n, 0o120777, 1, Buffer.from(e.target));
          break;
        case 'chardev':
          emit(n, 0o020000 | e.mode, 1, Buffer.alloc(0), e.major, e.minor);
          break;
      }
    }
    emit('TRAILER!!!', 0, 1, Buffer.alloc(0));
    return Buffer.concat(chunks);
  }
}

// ---------------------------------------------------------------------------
// Guest scripts (run by busybox sh INSIDE the guest)

const FNV_OFFSET = 2166136261;
const FNV_PRIME = 16777619;

/** The guest's /init (PID 1 until it execs busybox init). */
function initScript(): string {
  return `#!/bin/sh
# lab guest /init - generated by lab/guest-image.ts (${BUILDER_VERSION})
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /run/qga /tmp /data /var/log
exec </dev/console >/dev/console 2>&1
read up _ < /proc/uptime

LAB_VM=unknown
LAB_AGENT=1
LAB_RATE_MS=50
LAB_DATA_SERIAL=data
for a in $(cat /proc/cmdline); do
  case "$a" in
    lab.vm=*) LAB_VM="\${a#*=}" ;;
    lab.agent=*) LAB_AGENT="\${a#*=}" ;;
    lab.rate_ms=*) LAB_RATE_MS="\${a#*=}" ;;
    lab.data_serial=*) LAB_DATA_SERIAL="\${a#*=}" ;;
  esac
done
echo "LAB-BOOT vm=$LAB_VM agent=$LAB_AGENT uptime=$up"
hostname "$LAB_VM"

while read -r m; do
  [ -n "$m" ] || continue
  insmod "/lib/modules/lab/$m.ko" || echo "LAB-WARN insmod $m failed"
done < /lib/modules/lab/order

# Data disk: the virtio-blk disk whose serial is $LAB_DATA_SERIAL (fallback /dev/vda).
DATA_DEV=
i=0
while [ $i -lt 150 ]; do
  for d in /sys/block/vd*; do
    [ -e "$d/serial" ] || continue
    if [ "$(cat "$d/serial")" = "$LAB_DATA_SERIAL" ]; then DATA_DEV="/dev/\${d##*/}"; break; fi
  done
  [ -n "$DATA_DEV" ] && [ -b "$DATA_DEV" ] && break
  DATA_DEV=
  i=$((i + 1))
  usleep 100000
done
if [ -z "$DATA_DEV" ] && [ -b /dev/vda ]; then
  echo "LAB-WARN no disk with serial $LAB_DATA_SERIAL, using /dev/vda"
  DATA_DEV=/dev/vda
fi
if [ -n "$DATA_DEV" ] && mount -t ext4 "$DATA_DEV" /data; then
  read up _ < /proc/uptime
  echo "LAB-DATA-MOUNTED dev=$DATA_DEV uptime=$up"
else
  echo "LAB-ERROR cannot mount data disk ($DATA_DEV)"
fi

cat > /etc/lab.env <<EOF
LAB_VM=$LAB_VM
LAB_AGENT=$LAB_AGENT
LAB_RATE_MS=$LAB_RATE_MS
LAB_DATA_DEV=$DATA_DEV
EOF

{
  echo "::respawn:/bin/lab-workload"
  echo "::respawn:/sbin/acpid -f -c /etc/acpi"
  echo "::shutdown:/bin/lab-shutdown"
  echo "::ctrlaltdel:/sbin/reboot"
  echo "::restart:/sbin/init"
} > /etc/inittab

if [ "$LAB_AGENT" = 1 ]; then
  PORT=
  i=0
  while [ $i -lt 150 ]; do
    for p in /sys/class/virtio-ports/*; do
      [ -e "$p/name" ] || continue
      if [ "$(cat "$p/name")" = "${QGA_PORT_NAME}" ]; then PORT="/dev/\${p##*/}"; break; fi
    done
    [ -n "$PORT" ] && [ -c "$PORT" ] && break
    PORT=
    i=$((i + 1))
    usleep 100000
  done
  if [ -n "$PORT" ]; then
    read up _ < /proc/uptime
    echo "LAB-AGENT-PORT path=$PORT uptime=$up"
    echo "::respawn:/usr/sbin/qemu-ga -m virtio-serial -p $PORT -t /run/qga -f /run/qga/qemu-ga.pid -F/etc/qemu/fsfreeze-hook -l /dev/console" >> /etc/inittab
  else
    echo "LAB-ERROR no virtio port named ${QGA_PORT_NAME}"
  fi
else
  echo "LAB-AGENT-DISABLED"
fi

exec /sbin/init
`;
}

/** Appends checksummed records to /data/records.log forever (busybox sh). */
function workloadScript(): string {
  // 8 payload words, unrolled so that no subshell is needed per record.
  const words = [0, 1, 2, 3, 4, 5, 6, 7];
  const wordLines = words
    .map((i) => `  x=$(( (x * 1103515245 + 12345) & 0xffffffff )); p${i}=$x; h=$(( ((h ^ x) * ${FNV_PRIME}) & 0xffffffff ))`)
    .join('\n');
  const fmtWords = words.map(() => '%08x').join('');
  const argWords = words.map((i) => `$p${i}`).join(' ');
  return `#!/bin/sh
# lab workload - generated by lab/guest-image.ts (${BUILDER_VERSION})
[ -r /etc/lab.env ] && . /etc/lab.env
F=\${LAB_RECORDS_FILE:-/data/records.log}
RATE_MS=\${LAB_RATE_MS:-50}
SYNC_EVERY=\${LAB_SYNC_EVERY:-20}
echo $$ > "\${LAB_PIDFILE:-/run/lab-workload.pid}" 2>/dev/null

seq=0
if [ -s "$F" ]; then
  # Drop a torn tail (crash) so that every line but the last is whole.
  if [ "$(tail -c 1 "$F" | od -An -tx1 | tr -d ' ')" != "0a" ]; then
    size=$(wc -c < "$F")
    torn=$(tail -n 1 "$F" | wc -c)
    truncate -s $((size - torn)) "$F"
    echo "LAB-WORKLOAD-REPAIRED torn_bytes=$torn"
  fi
  if [ -s "$F" ]; then
    last=$(tail -n 1 "$F" | cut -d ' ' -f 1)
    case "$last" in
      ''|*[!0-9]*) seq=$(wc -l < "$F") ;;
      *) seq=$((last + 1)) ;;
    esac
  fi
fi

exec 3>>"$F"
now=$(date +%s)
read up _ < /proc/uptime
f=\${up#*.}; f=\${f#0}
base_cs=$(( \${up%.*} * 100 + f ))
base_ms=$(( now * 1000 ))
seed=$(( ((RANDOM << 16) ^ RANDOM ^ now) & 0xffffffff ))
echo "LAB-WORKLOAD-STARTED vm=\${LAB_VM:-?} seq=$seq file=$F rate_ms=$RATE_MS uptime=$up"
n=0
next=$(( base_ms ))
while :; do
  read up _ < /proc/uptime
  f=\${up#*.}; f=\${f#0}
  ts=$(( base_ms + ( \${up%.*} * 100 + f - base_cs ) * 10 ))
  h=${FNV_OFFSET}
  h=$(( ((h ^ (seq & 0xffffffff)) * ${FNV_PRIME}) & 0xffffffff ))
  h=$(( ((h ^ (ts & 0xffffffff)) * ${FNV_PRIME}) & 0xffffffff ))
  h=$(( ((h ^ ((ts >> 32) & 0xffffffff)) * ${FNV_PRIME}) & 0xffffffff ))
  x=$(( (seq * 2654435761 + seed) & 0xffffffff ))
${wordLines}
  printf '%d %d ${fmtWords} %08x\\n' $seq $ts ${argWords} $h >&3
  seq=$((seq + 1))
  n=$((n + 1))
  if [ $((n % SYNC_EVERY)) -eq 0 ]; then sync; fi
  if [ $((n % 1000)) -eq 0 ]; then echo "LAB-WORKLOAD-PROGRESS seq=$seq"; fi
  # pace to one record per RATE_MS (10 ms clock); do not burst after a stall (fsfreeze)
  next=$((next + RATE_MS))
  read up _ < /proc/uptime
  f=\${up#*.}; f=\${f#0}
  now_ms=$(( base_ms + ( \${up%.*} * 100 + f - base_cs ) * 10 ))
  if [ $((next - now_ms)) -gt 0 ]; then
    usleep $(( (next - now_ms) * 1000 ))
  elif [ $((now_ms - next)) -gt 1000 ]; then
    next=$now_ms
  fi
done
`;
}

function shutdownScript(): string {
  return `#!/bin/sh
# run by busybox init (::shutdown) before it kills everything
[ -r /run/lab-workload.pid ] && kill "$(cat /run/lab-workload.pid)" 2>/dev/null
[ -r /run/qga/qemu-ga.pid ] && kill "$(cat /run/qga/qemu-ga.pid)" 2>/dev/null
usleep 200000
sync
umount /data 2>/dev/null || mount -o remount,ro /data 2>/dev/null
echo "LAB-SHUTDOWN"
`;
}

/** /sbin/shutdown as qemu-ga's guest-shutdown calls it: shutdown -h|-P|-r|-H +0 "msg". */
function sbinShutdownScript(): string {
  return `#!/bin/sh
mode=poweroff
for a in "$@"; do
  case "$a" in
    -r) mode=reboot ;;
    -H) mode=halt ;;
    -P|-h) mode=poweroff ;;
  esac
done
echo "LAB-GUEST-SHUTDOWN mode=$mode"
exec /bin/busybox $mode
`;
}

function fsfreezeHookScript(): string {
  return `#!/bin/sh
echo "LAB-FSFREEZE $1" > /dev/console
echo "$1 $(cat /proc/uptime)" >> /run/qga/fsfreeze.log
exit 0
`;
}

function powerButtonScript(): string {
  return `#!/bin/sh
echo "LAB-POWER-BUTTON"
exec /bin/busybox poweroff
`;
}

/** The generated guest scripts, by their path inside the guest (for inspection / tests). */
export function guestScripts(): Record<string, string> {
  return {
    '/init': initScript(),
    '/bin/lab-workload': workloadScript(),
    '/bin/lab-shutdown': shutdownScript(),
    '/sbin/shutdown': sbinShutdownScript(),
    '/etc/qemu/fsfreeze-hook': fsfreezeHookScript(),
    '/etc/acpi/PWRF/00000080': powerButtonScript(),
  };
}

// ---------------------------------------------------------------------------
// Build

export interface GuestImage {
  kernel: string;
  kernelVersion: string;
  initramfs: string;
  /** content hash (hex, 16 chars) of the uncompressed archive */
  key: string;
  /** true when the cached initramfs was reused */
  cached: boolean;
  modules: string[];
  builtinModules: string[];
  skippedModules: string[];
  libraries: string[];
}

export interface BuildGuestOptions {
  labDir?: string;
  kernelVersion?: string;
  /** rebuild even if a cached initramfs with the same key exists */
  force?: boolean;
  qemuGa?: string;
  busybox?: string;
  log?: (msg: string) => void;
}

export function guestDir(labDir: string = defaultLabDir()): string {
  return path.join(labDir, 'guest');
}

function findBusybox(explicit?: string): string {
  const cands = explicit ? [explicit] : ['/bin/busybox', '/usr/bin/busybox'];
  for (const c of cands) if (fs.existsSync(c)) return c;
  throw new Error('lab: busybox not found (install busybox-static)');
}

/**
 * Build (or reuse from cache) the guest initramfs under `<labDir>/guest/`.
 * The cache key is a hash of the complete archive content (scripts, busybox,
 * qemu-ga, libraries, modules), so any input change produces a new image.
 */
export async function buildGuest(opts: BuildGuestOptions = {}): Promise<GuestImage> {
  const labDir = opts.labDir ?? defaultLabDir();
  const log = opts.log ?? (() => undefined);
  const kernel = findKernel(opts.kernelVersion);
  const busybox = findBusybox(opts.busybox);
  const qemuGa = opts.qemuGa ?? '/usr/sbin/qemu-ga';
  if (!fs.existsSync(qemuGa)) throw new Error(`lab: ${qemuGa} not found (install qemu-guest-agent)`);

  const bbCheck = await run('file', ['-L', busybox]).catch(() => undefined);
  if (bbCheck && bbCheck.code === 0 && !/statically linked|static-pie/.test(bbCheck.stdout)) {
    throw new Error(`lab: ${busybox} is not statically linked (install busybox-static)`);
  }

  const cpio = new CpioBuilder();
  for (const d of [
    'bin',
    'sbin',
    'usr/bin',
    'usr/sbin',
    'lib/x86_64-linux-gnu',
    'lib64',
    'etc/qemu',
    'proc',
    'sys',
    'dev',
    'run',
    'tmp',
    'data',
    'root',
    'var/log',
  ]) {
    cpio.dir(d);
  }
  cpio.dir('tmp', 0o1777);
  cpio.symlink('var/run', '/run');
  cpio.chardev('dev/console', 5, 1, 0o600);
  cpio.chardev('dev/null', 1, 3, 0o666);

  // busybox + applet symlinks
  cpio.file('bin/busybox', fs.readFileSync(busybox), 0o755);
  const list = await runOk(busybox, ['--list-full']);
  for (const applet of list.stdout
    .split('\n')
    .map((s) => s.trim())
    .filter(Boolean)) {
    if (applet === 'bin/busybox' || applet === 'linuxrc') continue;
    cpio.symlink(applet, '/bin/busybox');
  }

  // qemu-ga and every library ldd lists (at the same paths, dereferenced)
  cpio.file('usr/sbin/qemu-ga', fs.readFileSync(qemuGa), 0o755);
  const libs = await sharedLibraries(qemuGa);
  for (const lib of libs) cpio.file(lib, fs.readFileSync(lib), 0o755);
  cpio.file('etc/passwd', 'root:x:0:0:root:/root:/bin/sh\n');
  cpio.file('etc/group', 'root:x:0:\n');

  // kernel modules
  const { modules, builtin, skipped } = await resolveModules(kernel);
  for (const m of modules) cpio.file(`lib/modules/lab/${m.name}.ko`, await moduleBytes(m));
  cpio.file('lib/modules/lab/order', modules.map((m) => m.name).join('\n') + '\n');

  // scripts
  cpio.file('init', initScript(), 0o755);
  cpio.file('bin/lab-workload', workloadScript(), 0o755);
  cpio.file('bin/lab-shutdown', shutdownScript(), 0o755);
  cpio.file('sbin/shutdown', sbinShutdownScript(), 0o755);
  cpio.file('etc/qemu/fsfreeze-hook', fsfreezeHookScript(), 0o755);
  cpio.file('etc/acpi/PWRF/00000080', powerButtonScript(), 0o755);
  cpio.file('etc/lab-guest-version', `${BUILDER_VERSION} kernel=${kernel.version}\n`);

  const archive = cpio.build();
  const key = createHash('sha256').update(BUILDER_VERSION).update(archive).digest('hex').slice(0, 16);
  const dir = guestDir(labDir);
  mkdirp(dir);
  const initramfs = path.join(dir, `initramfs-${key}.cpio.gz`);
  const cached = fs.existsSync(initramfs) && !opts.force;
  if (!cached) {
    const gz = zlib.gzipSync(archive, { level: 6 });
    const tmp = `${initramfs}.tmp-${process.pid}`;
    fs.writeFileSync(tmp, gz);
    fs.renameSync(tmp, initramfs);
    log(`lab: built ${initramfs} (${(gz.length / 1048576).toFixed(1)} MiB, ${modules.length} modules)`);
    for (const f of fs.readdirSync(dir)) {
      if (/^initramfs-[0-9a-f]{16}\.cpio\.gz$/.test(f) && f !== path.basename(initramfs)) {
        fs.rmSync(path.join(dir, f), { force: true });
      }
    }
  } else {
    log(`lab: guest image up to date (${initramfs})`);
  }
  const image: GuestImage = {
    kernel: kernel.vmlinuz,
    kernelVersion: kernel.version,
    initramfs,
    key,
    cached,
    modules: modules.map((m) => m.name),
    builtinModules: builtin,
    skippedModules: skipped,
    libraries: libs,
  };
  fs.writeFileSync(path.join(dir, 'guest.json'), JSON.stringify(image, null, 2) + '\n');
  return image;
}

// ---------------------------------------------------------------------------
// Records verification (host side)

/** 32-bit FNV-1a-style fold used by the guest workload. */
export function recordChecksum(seq: number, tsMs: number, payloadWords: readonly number[]): number {
  let h = FNV_OFFSET >>> 0;
  const mix = (w: number): void => {
    h = Math.imul((h ^ w) >>> 0, FNV_PRIME) >>> 0;
  };
  mix(seq >>> 0);
  mix((tsMs % 4294967296) >>> 0);
  mix(Math.floor(tsMs / 4294967296) >>> 0);
  for (const w of payloadWords) mix(w >>> 0);
  return h >>> 0;
}

export interface ParsedRecord {
  seq: number;
  tsMs: number;
  payload: string;
  checksum: number;
}

const RECORD_RE = /^(\d+) (\d+) ([0-9a-f]{64}) ([0-9a-f]{8})$/;

/** Parse and check one line (without its newline); undefined if not a valid record. */
export function parseRecord(line: string): ParsedRecord | undefined {
  const m = RECORD_RE.exec(line);
  if (!m) return undefined;
  const seq = Number(m[1]);
  const tsMs = Number(m[2]);
  const payload = m[3];
  const checksum = parseInt(m[4], 16);
  const words: number[] = [];
  for (let i = 0; i < 8; i++) words.push(parseInt(payload.slice(i * 8, i * 8 + 8), 16));
  if (recordChecksum(seq, tsMs, words) !== checksum) return undefined;
  return { seq, tsMs, payload, checksum };
}

export interface RecordsVerification {
  /** lines seen: whole + broken + (tornTail ? 1 : 0) */
  records: number;
  /** complete lines with a valid checksum */
  whole: number;
  /** complete (newline-terminated) lines that fail to parse / checksum: always an error */
  broken: number;
  /** seq of the last whole record, -1 if none */
  lastSeq: number;
  /** first seq seen, -1 if none */
  firstSeq: number;
  /** a partial record after the last newline (crash tail): acceptable */
  tornTail: boolean;
  tornTailBytes: number;
  /** places where seq did not increase by exactly 1 (error) */
  seqErrors: number;
  /** no broken lines and no sequence errors */
  ok: boolean;
  /** first few problems, human readable */
  errors: string[];
}

/**
 * Verify the text of records.log. A trailing partial line (no newline after
 * it) is a torn-but-acceptable crash tail; any other bad line is an error, as
 * is a sequence number that does not follow its predecessor.
 */
export function verifyRecords(text: string | Buffer): RecordsVerification {
  const s = Buffer.isBuffer(text) ? text.toString('latin1') : text;
  const res: RecordsVerification = {
    records: 0,
    whole: 0,
    broken: 0,
    lastSeq: -1,
    firstSeq: -1,
    tornTail: false,
    tornTailBytes: 0,
    seqErrors: 0,
    ok: true,
    errors: [],
  };
  const lines = s.split('\n');
  const tail = lines.pop() ?? '';
  if (tail.length > 0) {
    res.tornTail = true;
    res.tornTailBytes = Buffer.byteLength(tail, 'latin1');
  }
  let prev = -1;
  lines.forEach((line, i) => {
    const r = parseRecord(line);
    if (!r) {
      res.broken++;
      if (res.errors.length < 10) res.errors.push(`line ${i + 1}: broken record ${JSON.stringify(line.slice(0, 120))}`);
      return;
    }
    res.whole++;
    if (res.firstSeq < 0) res.firstSeq = r.seq;
    if (prev >= 0 && r.seq !== prev + 1) {
      res.seqErrors++;
      if (res.errors.length < 10) res.errors.push(`line ${i + 1}: seq ${r.seq} follows ${prev}`);
    }
    prev = r.seq;
    res.lastSeq = r.seq;
  });
  res.records = res.whole + res.broken + (res.tornTail ? 1 : 0);
  res.ok = res.broken === 0 && res.seqErrors === 0;
  return res;
}
