// Enumerate of a libvirt host with many domains (issue 22 item 3): the provider's enumerate,
// timed, and the programs it starts counted, on a host of N small domains this benchmark defines
// (vmb-fl-*), most shut off, a few running (no guest OS: SeaBIOS finds no boot disk and halts).
// Each has a qcow2 v3 disk and a raw disk; some a pool volume disk (vol-dumpxml), some an agent
// channel with no agent behind it (guestinfo answers "not connected"). libvirtd is shared: this
// never stops it and touches only the domains, pool and files it made.
//
//   node dist/bench/libvirt-fleet.js [--domains=50] [--running=4] [--runs=5] [--keep] [--json=FILE]
//
// Also a section of `npm run bench` (--only=libvirt).
import { constants, promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { LibvirtProvider } from '../src/providers/libvirt/libvirt-provider';
import { runProgram } from '../src/util/run';
import { loadAvg, log, median, nowMs, round } from './util';

const URI = 'qemu:///system';
export const FLEET_PREFIX = 'vmb-fl-';
const POOL = 'vmb-fl-pool';

export interface LibvirtFleetOptions {
  domains: number;
  running: number;
  runs: number;
  work: string;
  keep?: boolean;
  /** the fleet a --keep run left (same size): not defined again */
  reuse?: boolean;
}

const virsh = (args: readonly string[], timeoutMs = 60_000) => runProgram('virsh', ['-c', URI, ...args], { timeoutMs });

export async function libvirtAnswers(): Promise<boolean> {
  return virsh(['list', '--name'], 10_000).then(
    () => true,
    () => false,
  );
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/'/g, '&apos;');

function domainXml(name: string, i: number, dir: string, o: { volume: boolean; agent: boolean }): string {
  const file = (f: string, fmt: string, dev: string) =>
    `<disk type='file' device='disk'><driver name='qemu' type='${fmt}'/><source file='${esc(f)}'/><target dev='${dev}' bus='virtio'/></disk>`;
  const vol = `<disk type='volume' device='disk'><driver name='qemu' type='qcow2'/><source pool='${POOL}' volume='${FLEET_PREFIX}${i}.qcow2'/><target dev='vdc' bus='virtio'/></disk>`;
  return `<domain type='qemu'><name>${esc(name)}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='network'/></os>
<on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>
${file(path.join(dir, `${name}-a.qcow2`), 'qcow2', 'vda')}
${file(path.join(dir, `${name}-b.raw`), 'raw', 'vdb')}
${o.volume ? vol : ''}
${o.agent ? `<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>` : ''}
<memballoon model='none'/></devices></domain>`;
}

export interface Fleet {
  names: string[];
  stop(): Promise<void>;
}

/** Defines the fleet (anything left of an earlier run under the prefix is removed first). */
export async function defineFleet(o: LibvirtFleetOptions & { reuse?: boolean }): Promise<Fleet> {
  const existing = (await virsh(['list', '--all', '--name'])).stdout.split('\n').filter((s) => s.startsWith(FLEET_PREFIX));
  if (o.reuse && existing.length === o.domains) {
    return { names: existing, stop: () => (o.keep ? Promise.resolve() : removeFleet(o.work)) };
  }
  await removeFleet(o.work);
  const dir = path.join(o.work, 'libvirt-fleet');
  const poolDir = path.join(dir, 'pool');
  await fs.mkdir(poolDir, { recursive: true });
  await virsh(['pool-create-as', '--name', POOL, '--type', 'dir', '--target', poolDir]);
  const names: string[] = [];
  for (let i = 0; i < o.domains; i++) {
    const name = `${FLEET_PREFIX}${String(i).padStart(3, '0')}`;
    const volume = i % 10 === 5;
    await runProgram('qemu-img', ['create', '-q', '-f', 'qcow2', path.join(dir, `${name}-a.qcow2`), '16M']);
    await runProgram('qemu-img', ['create', '-q', '-f', 'raw', path.join(dir, `${name}-b.raw`), '8M']);
    if (volume)
      await virsh(['vol-create-as', '--pool', POOL, '--name', `${FLEET_PREFIX}${i}.qcow2`, '--capacity', '8M', '--format', 'qcow2']);
    const xml = path.join(dir, `${name}.xml`);
    await fs.writeFile(xml, domainXml(name, i, dir, { volume, agent: i % 2 === 1 }));
    await virsh(['define', '--file', xml]);
    names.push(name);
  }
  for (const name of names.slice(0, o.running)) await virsh(['start', '--domain', name]);
  return { names, stop: () => (o.keep ? Promise.resolve() : removeFleet(o.work)) };
}

/** Destroys and undefines every vmb-fl-* domain and the fleet's pool; only ours. */
export async function removeFleet(work: string): Promise<void> {
  const all = (await virsh(['list', '--all', '--name'])).stdout
    .split('\n')
    .map((s) => s.trim())
    .filter((s) => s.startsWith(FLEET_PREFIX));
  for (const name of all) {
    await virsh(['destroy', '--domain', name]).catch(() => undefined);
    await virsh(['undefine', '--domain', name, '--checkpoints-metadata']).catch(() => undefined);
  }
  await virsh(['pool-destroy', '--pool', POOL]).catch(() => undefined);
  await fs.rm(path.join(work, 'libvirt-fleet'), { recursive: true, force: true });
}

async function onPath(prog: string): Promise<string> {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    const f = path.join(dir, prog);
    if (
      await fs.access(f, constants.X_OK).then(
        () => true,
        () => false,
      )
    )
      return f;
  }
  throw new Error(`${prog} is not on PATH`);
}

/**
 * Programs the provider starts, counted by wrappers put first on PATH (a shell script each that
 * logs its name, then runs the real program): used in a separate run from the timed ones.
 */
async function countPrograms(work: string, fn: () => Promise<unknown>): Promise<Record<string, number>> {
  const bin = path.join(work, 'libvirt-fleet', 'count-bin');
  const logFile = path.join(bin, 'started.log');
  await fs.mkdir(bin, { recursive: true });
  await fs.writeFile(logFile, '');
  for (const prog of ['virsh', 'qemu-img', 'qemu-nbd']) {
    const real = await onPath(prog);
    await fs.writeFile(path.join(bin, prog), `#!/bin/sh\necho ${prog} >> '${logFile}'\nexec '${real}' "$@"\n`, { mode: 0o755 });
  }
  const before = process.env.PATH;
  process.env.PATH = `${bin}:${before}`;
  try {
    await fn();
  } finally {
    process.env.PATH = before;
  }
  const counts: Record<string, number> = {};
  for (const l of (await fs.readFile(logFile, 'utf8')).split('\n').filter(Boolean)) counts[l] = (counts[l] ?? 0) + 1;
  return counts;
}

export async function libvirtFleetSection(o: LibvirtFleetOptions): Promise<Record<string, unknown>> {
  if (!(await libvirtAnswers())) return { skipped: `libvirtd does not answer on ${URI}` };
  const fleet = await defineFleet(o);
  try {
    const enumerate = async () => {
      const provider = new LibvirtProvider({ uri: URI, runDir: path.join(o.work, 'libvirt-fleet', 'run') });
      const t0 = nowMs();
      const vms = await provider.enumerate();
      return { ms: nowMs() - t0, vms };
    };
    await enumerate(); // warm: libvirtd's and the page cache's first look
    const times: number[] = [];
    let domains = 0;
    let ours = 0;
    let unreachable = 0;
    const loadBefore = loadAvg();
    for (let i = 0; i < o.runs; i++) {
      const r = await enumerate();
      times.push(r.ms);
      domains = r.vms.length;
      ours = r.vms.filter((v) => v.id.startsWith(FLEET_PREFIX)).length;
      unreachable = r.vms.filter((v) => v.id.startsWith(FLEET_PREFIX) && v.state === 'unreachable').length;
      log(`libvirt enumerate: ${r.vms.length} domains in ${Math.round(r.ms)} ms`);
    }
    const loadAfter = loadAvg();
    const programs = await countPrograms(o.work, enumerate);
    const v0 = nowMs();
    await virsh(['list', '--all', '--name']);
    const listAloneMs = nowMs() - v0;
    return {
      domains,
      fleetDomains: ours,
      fleetRunning: o.running,
      fleetUnreachable: unreachable,
      runs: o.runs,
      enumerateMs: times.map((t) => Math.round(t)),
      medianMs: Math.round(median(times)),
      perDomainMs: round(median(times) / Math.max(1, domains), 1),
      programs,
      virshListAloneMs: Math.round(listAloneMs),
      load: [...loadBefore, ...loadAfter],
    };
  } finally {
    await fleet.stop();
  }
}

async function main(): Promise<void> {
  const arg = (k: string, d: number) => Number(process.argv.find((a) => a.startsWith(`--${k}=`))?.split('=')[1] ?? d);
  const json = process.argv.find((a) => a.startsWith('--json='))?.split('=')[1];
  const work = path.join(os.tmpdir(), 'vmb-bench-lvfleet');
  const r = await libvirtFleetSection({
    domains: arg('domains', 50),
    running: arg('running', 4),
    runs: arg('runs', 5),
    work,
    keep: process.argv.includes('--keep'),
    reuse: process.argv.includes('--reuse'),
  });
  const text = JSON.stringify(r, null, 2);
  if (json) await fs.writeFile(json, text + '\n');
  console.log(text);
}

if (require.main === module) {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
