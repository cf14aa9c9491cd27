/**
 * A libvirt lab host: libvirtd started by hand (containers here have no systemd), three domains
 * of type 'qemu' (TCG: KVM hangs on these machines) booting the lab's own guest (guest-image.ts):
 *
 *   vmb-lv-agent    running, qemu-ga on the org.qemu.guest_agent.0 channel, workload on /data
 *   vmb-lv-noagent  running, no agent channel at all (crash-consistent case)
 *   vmb-lv-off      defined, never started (offline case); its ext4 holds /hello.txt
 *
 * Layout: <lab>/libvirt/{images,run}/, libvirtd.conf, libvirtd.pid, libvirtd.log, <dom>.log
 * (serial console). Everything goes through `virsh` with argument vectors.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { buildGuest, defaultLabDir, type GuestImage } from './guest-image';
import { installPackages, LAB_PACKAGES } from './install-packages';
import { exists, mkdirp, pidAlive, pidCmdline, readPidFile, rmf, run, runOk, sleep, tailFile, waitUntil } from './util';

/** Debian packages for libvirt without systemd (libvirt-daemon-system would expect systemd). */
export const LIBVIRT_PACKAGES: readonly string[] = ['libvirt-daemon', 'libvirt-daemon-driver-qemu', 'libvirt-clients'];

export const LIBVIRT_URI = 'qemu:///system';

export interface LibvirtDomainSpec {
  name: string;
  agent: boolean;
  /** started by libvirtStart (false: defined only, stays shut off) */
  running: boolean;
}

export const LIBVIRT_DOMAINS: readonly LibvirtDomainSpec[] = [
  { name: 'vmb-lv-agent', agent: true, running: true },
  { name: 'vmb-lv-noagent', agent: false, running: true },
  { name: 'vmb-lv-off', agent: true, running: false },
];

export const WORKLOAD_MARKER = 'LAB-WORKLOAD-STARTED';

const QEMU_CONF = '/etc/libvirt/qemu.conf';
const CONF_MARKER = '# vm-backup lab settings (lab/libvirt-lab.ts)';
/**
 * What the qemu driver needs in a container: QEMU as root (the lab's images are root's), no
 * security driver and no cgroups (neither works in the container), no mount namespace, and QEMU's
 * output to a file (virtlogd is not started).
 */
const QEMU_CONF_SETTINGS: Record<string, string> = {
  user: '"root"',
  group: '"root"',
  security_driver: '"none"',
  cgroup_controllers: '[ ]',
  namespaces: '[ ]',
  stdio_handler: '"file"',
  remember_owner: '0',
};

export function libvirtDir(labDir = defaultLabDir()): string {
  return path.join(path.resolve(labDir), 'libvirt');
}

export function domainImage(name: string, labDir = defaultLabDir()): string {
  return path.join(libvirtDir(labDir), 'images', `${name}-data.qcow2`);
}

export function domainConsole(name: string, labDir = defaultLabDir()): string {
  return path.join(libvirtDir(labDir), 'run', `${name}.log`);
}

export function virsh(args: readonly string[], timeoutMs = 60_000) {
  return run('virsh', ['-c', LIBVIRT_URI, ...args], { timeoutMs });
}

async function virshOk(args: readonly string[], timeoutMs = 60_000): Promise<string> {
  const r = await virsh(args, timeoutMs);
  if (r.code !== 0) throw new Error(`virsh ${args.join(' ')}: ${(r.stderr || r.stdout).trim()}`);
  return r.stdout;
}

/** qemu.conf with our settings: other lines kept, a line setting one of our keys commented out. */
export function qemuConfWith(existing: string): string {
  const keys = Object.keys(QEMU_CONF_SETTINGS);
  const kept: string[] = [];
  for (const line of existing.split('\n')) {
    if (line === CONF_MARKER) break; // our block is always last: rewritten below
    const key = /^\s*([a-z_]+)\s*=/.exec(line)?.[1];
    kept.push(key && keys.includes(key) ? `# ${line}` : line);
  }
  while (kept.length > 0 && kept[kept.length - 1] === '') kept.pop();
  const block = [CONF_MARKER, ...keys.map((k) => `${k} = ${QEMU_CONF_SETTINGS[k]}`)];
  return [...kept, ...(kept.length ? [''] : []), ...block, ''].join('\n');
}

async function ensureUsers(log: (m: string) => void): Promise<void> {
  // the qemu driver refuses to load without them (it looks them up at start)
  if ((await run('getent', ['group', 'libvirt-qemu'])).code !== 0) {
    await runOk('groupadd', ['-r', 'libvirt-qemu']);
    log('lab: group libvirt-qemu created');
  }
  if ((await run('getent', ['passwd', 'libvirt-qemu'])).code !== 0) {
    await runOk('useradd', ['-r', '-g', 'libvirt-qemu', '-d', '/var/lib/libvirt', '-s', '/usr/sbin/nologin', 'libvirt-qemu']);
    log('lab: user libvirt-qemu created');
  }
}

function ourLibvirtdPid(dir: string): number | undefined {
  const pid = readPidFile(path.join(dir, 'libvirtd.pid'));
  if (pid === undefined || !pidAlive(pid)) return undefined;
  return pidCmdline(pid)?.some((a) => a.endsWith('libvirtd')) ? pid : undefined;
}

/** libvirtd answers on qemu:///system (started by us now, or already running). */
export async function libvirtdUp(): Promise<boolean> {
  return (await virsh(['version'], 10_000)).code === 0;
}

async function startLibvirtd(dir: string, log: (m: string) => void): Promise<void> {
  if (await libvirtdUp()) {
    log('lab: libvirtd already answers on qemu:///system');
    return;
  }
  const conf = path.join(dir, 'libvirtd.conf');
  // its own config: log to the lab directory, nothing else differs from the defaults
  fs.writeFileSync(conf, `log_outputs = "3:file:${path.join(dir, 'libvirtd.log')}"\n`);
  await runOk('libvirtd', ['-d', '-f', conf, '-p', path.join(dir, 'libvirtd.pid')]);
  if (!(await waitUntil(libvirtdUp, 20_000, 250))) {
    throw new Error(`lab: libvirtd did not answer on qemu:///system; log tail:\n${tailFile(path.join(dir, 'libvirtd.log'), 1500)}`);
  }
  log(`lab: libvirtd started (pid ${ourLibvirtdPid(dir) ?? '?'})`);
}

/**
 * Restart the libvirtd this lab started, the way it was started (fault cases: a package upgrade
 * or an admin restarts libvirtd mid-backup). SIGTERM, wait for it to exit, stay down `downMs`,
 * start it again and wait until it answers. A libvirtd the lab did not start is never touched.
 */
export async function libvirtdRestart(opts: { labDir?: string; downMs?: number; onDown?: () => void | Promise<void> } = {}): Promise<void> {
  const dir = libvirtDir(opts.labDir);
  const pid = ourLibvirtdPid(dir);
  if (pid === undefined)
    throw new Error(`lab: no libvirtd started by this lab (${path.join(dir, 'libvirtd.pid')}); not restarting another one`);
  process.kill(pid, 'SIGTERM');
  if (!(await waitUntil(() => !pidAlive(pid), 20_000, 50))) throw new Error(`lab: libvirtd (pid ${pid}) did not exit on SIGTERM`);
  await opts.onDown?.();
  await sleep(opts.downMs ?? 0);
  await startLibvirtd(dir, () => undefined);
}

/** An ext4 data disk as qcow2, with /hello.txt on it (so an offline copy has content to check). */
export async function makeDataImage(file: string, label: string): Promise<void> {
  mkdirp(path.dirname(file));
  const raw = `${file}.raw-tmp`;
  const hello = `${file}.hello-tmp`;
  fs.writeFileSync(raw, '');
  fs.truncateSync(raw, 128 * 1024 * 1024);
  fs.writeFileSync(hello, `hello from ${label}\n`);
  try {
    await runOk('mkfs.ext4', ['-F', '-q', '-L', 'data', '-E', 'lazy_itable_init=0,lazy_journal_init=0', raw]);
    await runOk('debugfs', ['-w', '-R', `write ${hello} hello.txt`, raw]);
    await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, `${file}.tmp`]);
    fs.renameSync(`${file}.tmp`, file);
  } finally {
    rmf(raw);
    rmf(hello);
  }
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;');

/** The domain XML: direct kernel boot of the lab guest, one virtio data disk, console to a file. */
export function domainXml(spec: LibvirtDomainSpec, guest: Pick<GuestImage, 'kernel' | 'initramfs'>, labDir = defaultLabDir()): string {
  const disk = `    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='writeback' discard='unmap'/>
      <source file='${esc(domainImage(spec.name, labDir))}'/>
      <target dev='vda' bus='virtio'/>
      <serial>data</serial>
    </disk>
`;
  return guestDomainXml({ name: spec.name, agent: spec.agent, guest, console: domainConsole(spec.name, labDir), disks: disk });
}

/**
 * A domain booting the lab guest with the given <disk> elements (one of them with serial "data":
 * the guest mounts it at /data and writes its records there).
 */
export function guestDomainXml(o: {
  name: string;
  agent: boolean;
  guest: Pick<GuestImage, 'kernel' | 'initramfs'>;
  console: string;
  disks: string;
}): string {
  const { guest } = o;
  const cmdline = `console=ttyS0 quiet lab.vm=${o.name} lab.agent=${o.agent ? 1 : 0} lab.rate_ms=50 lab.data_serial=data`;
  const agent = o.agent ? `    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\n` : '';
  return `<domain type='qemu'>
  <name>${esc(o.name)}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>${esc(guest.kernel)}</kernel>
    <initrd>${esc(guest.initramfs)}</initrd>
    <cmdline>${esc(cmdline)}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
${o.disks}    <serial type='file'><source path='${esc(o.console)}' append='on'/><target port='0'/></serial>
${agent}    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='none'/>
  </devices>
</domain>
`;
}

export interface LibvirtStartOptions {
  labDir?: string;
  install?: boolean;
  /** per-domain wait for workload (and agent) in ms; default 180 s */
  timeoutMs?: number;
  log?: (m: string) => void;
}

export interface LibvirtLabDomain {
  name: string;
  state: string;
  image: string;
  console: string;
  agent: boolean;
}

/**
 * libvirtd answering on qemu:///system and the lab guest built, no domain touched: what a suite
 * that defines its own domains needs (idempotent).
 */
export async function libvirtHost(opts: LibvirtStartOptions = {}): Promise<GuestImage> {
  const labDir = path.resolve(opts.labDir ?? defaultLabDir());
  const log = opts.log ?? (() => undefined);
  const dir = libvirtDir(labDir);
  if (opts.install) await installPackages({ packages: [...LAB_PACKAGES, ...LIBVIRT_PACKAGES], log });
  mkdirp(path.join(dir, 'images'));
  mkdirp(path.join(dir, 'run'));
  await ensureUsers(log);
  const conf = exists(QEMU_CONF) ? fs.readFileSync(QEMU_CONF, 'utf8') : '';
  const wanted = qemuConfWith(conf);
  if (wanted !== conf) {
    fs.mkdirSync(path.dirname(QEMU_CONF), { recursive: true });
    fs.writeFileSync(QEMU_CONF, wanted);
    log(`lab: ${QEMU_CONF} written`);
    // a libvirtd already running reads qemu.conf only at its start
    if (await libvirtdUp()) log('lab: libvirtd was running before qemu.conf changed; restart it if domains fail to start');
  }
  await startLibvirtd(dir, log);
  return buildGuest({ labDir, log });
}

/** Set up and start the libvirt lab (idempotent: running domains are left alone). */
export async function libvirtStart(opts: LibvirtStartOptions = {}): Promise<LibvirtLabDomain[]> {
  const labDir = path.resolve(opts.labDir ?? defaultLabDir());
  const log = opts.log ?? (() => undefined);
  const dir = libvirtDir(labDir);
  const guest = await libvirtHost(opts);

  const started: string[] = [];
  for (const spec of LIBVIRT_DOMAINS) {
    const image = domainImage(spec.name, labDir);
    let state = await domState(spec.name);
    if (state !== undefined && !(await virshOk(['dumpxml', spec.name])).includes(`${dir}/`)) {
      // defined by a lab in another directory (another lab dir, a run from another clone): its
      // disks, checkpoints and console are not this lab's; it is replaced, never reused
      if (state !== 'shut off') await virsh(['destroy', spec.name]);
      await virshOk(['undefine', spec.name, '--managed-save', '--checkpoints-metadata', '--snapshots-metadata']);
      log(`lab: domain ${spec.name} belonged to a lab elsewhere: undefined`);
      state = undefined;
    }
    if (state === undefined) {
      if (!exists(image)) await makeDataImage(image, spec.name);
      const xmlFile = path.join(dir, 'run', `${spec.name}.xml`);
      fs.writeFileSync(xmlFile, domainXml(spec, guest, labDir));
      await virshOk(['define', xmlFile]);
      log(`lab: domain ${spec.name} defined`);
    }
    if (spec.running && (await domState(spec.name)) !== 'running') {
      const con = domainConsole(spec.name, labDir);
      if (exists(con)) fs.renameSync(con, `${con}.prev`);
      await virshOk(['start', spec.name]);
      started.push(spec.name);
      log(`lab: domain ${spec.name} started`);
    }
  }
  const timeoutMs = opts.timeoutMs ?? 180_000;
  await Promise.all(
    LIBVIRT_DOMAINS.filter((s) => s.running).map(async (spec) => {
      // a domain that was running already passed this wait when it started
      if (started.includes(spec.name)) await waitForDomainWorkload(spec.name, timeoutMs, labDir);
      if (spec.agent) await waitForDomainAgent(spec.name, timeoutMs);
      log(`lab: ${spec.name} ready${started.includes(spec.name) ? '' : ' (was running)'}`);
    }),
  );
  return libvirtStatus(labDir);
}

/** `virsh domstate` of a domain, undefined when it is not defined. */
export async function domState(name: string): Promise<string | undefined> {
  const r = await virsh(['domstate', name], 20_000);
  return r.code === 0 ? r.stdout.trim() : undefined;
}

export async function waitForDomainWorkload(name: string, timeoutMs: number, labDir = defaultLabDir()): Promise<void> {
  const con = domainConsole(name, labDir);
  const ok = await waitUntil(
    () => {
      const text = exists(con) ? fs.readFileSync(con, 'latin1') : '';
      if (/LAB-ERROR/.test(text)) throw new Error(`lab: ${name} reported an error; console tail:\n${tailFile(con, 1500)}`);
      return text.includes(WORKLOAD_MARKER);
    },
    timeoutMs,
    250,
  );
  if (!ok) throw new Error(`lab: workload of ${name} did not start within ${timeoutMs} ms; console tail:\n${tailFile(con, 1500)}`);
}

/** Until libvirt's agent channel answers (guestinfo: qemu-agent-command would taint the domain). */
export async function waitForDomainAgent(name: string, timeoutMs: number): Promise<void> {
  const ok = await waitUntil(async () => (await virsh(['guestinfo', '--domain', name, '--hostname'], 10_000)).code === 0, timeoutMs, 500);
  if (!ok) throw new Error(`lab: the guest agent of ${name} did not answer within ${timeoutMs} ms`);
}

export async function libvirtStatus(labDir = defaultLabDir()): Promise<LibvirtLabDomain[]> {
  const out: LibvirtLabDomain[] = [];
  for (const spec of LIBVIRT_DOMAINS) {
    out.push({
      name: spec.name,
      state: (await domState(spec.name)) ?? 'undefined',
      image: domainImage(spec.name, labDir),
      console: domainConsole(spec.name, labDir),
      agent: spec.agent,
    });
  }
  return out;
}

/**
 * Stop the lab's domains (ACPI shutdown, then destroy), undefine them, and stop libvirtd if this
 * lab started it. Domains not of this lab and a libvirtd started by someone else are left alone.
 */
export async function libvirtStop(opts: { labDir?: string; log?: (m: string) => void; keepImages?: boolean } = {}): Promise<void> {
  const labDir = path.resolve(opts.labDir ?? defaultLabDir());
  const log = opts.log ?? (() => undefined);
  const dir = libvirtDir(labDir);
  if (await libvirtdUp()) {
    await Promise.all(
      LIBVIRT_DOMAINS.map(async (spec) => {
        const state = await domState(spec.name);
        if (state === undefined) return;
        if (state !== 'shut off') {
          await virsh(['shutdown', spec.name]);
          if (!(await waitUntil(async () => (await domState(spec.name)) === 'shut off', 20_000, 500))) {
            await virsh(['destroy', spec.name]);
          }
        }
        // a backup job of a killed test would keep the domain; managed save images go with it
        await virsh(['undefine', spec.name, '--managed-save', '--checkpoints-metadata', '--snapshots-metadata']);
        log(`lab: domain ${spec.name} stopped and undefined`);
      }),
    );
  }
  const pid = ourLibvirtdPid(dir);
  if (pid !== undefined) {
    process.kill(pid, 'SIGTERM');
    if (!(await waitUntil(() => !pidAlive(pid), 10_000, 200))) process.kill(pid, 'SIGKILL');
    await sleep(200);
    log(`lab: libvirtd (pid ${pid}) stopped`);
  }
  if (!opts.keepImages) fs.rmSync(path.join(dir, 'images'), { recursive: true, force: true });
}
