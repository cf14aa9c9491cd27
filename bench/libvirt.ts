// Full backup of the same libvirt domain (the lab's vmb-lv-agent) by our provider and by
// virtnbdbackup (Debian package; drives the same libvirt backup API), alternating, same run:
// wall time, freeze window, bytes written.
//
//   node dist/bench/libvirt.js [--runs N]      (the libvirt lab must run: lab/cli.js libvirt-start)
//
// Freeze window, two ways: ours as the pipeline measures it (freeze sent -> thaw acknowledged,
// frozenMs); and for both tools from inside the guest, the same way: the workload stamps a record
// every 50 ms and cannot write while its file system is frozen, so the longest gap between record
// stamps during a run is the guest's frozen window (plus up to one period). virtnbdbackup logs
// with second resolution only, so the guest's view is the only like-for-like one.
import { mkdtempSync, promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { domainImage } from '../lab/libvirt-lab';
import { parseRecord } from '../lab/guest-image';
import { Journal } from '../src/journal/journal';
import { BackupHost, DEFAULT_TIMEOUTS } from '../src/pipeline/backup-host';
import { LibvirtProvider } from '../src/providers/libvirt/libvirt-provider';
import { runProgram } from '../src/util/run';
import { median, nowMs, sleep } from './util';

const DOMAIN = 'vmb-lv-agent';
const LAB = process.env.VMBACKUP_LAB_DIR ?? '/tmp/vm-backup-lab';

interface Run {
  tool: 'ours' | 'virtnbdbackup';
  startMs: number;
  endMs: number;
  wallMs: number;
  bytes: number;
  diskBytes: number;
  frozenMs?: number;
  guestGapMs?: number;
}

async function du(dir: string): Promise<{ bytes: number; diskBytes: number }> {
  let bytes = 0;
  let diskBytes = 0;
  for (const e of await fs.readdir(dir, { withFileTypes: true, recursive: true })) {
    if (!e.isFile()) continue;
    const st = await fs.stat(path.join(e.parentPath ?? (e as unknown as { path: string }).path, e.name));
    bytes += st.size;
    if (/\.(qcow2|data)$/.test(e.name)) diskBytes += st.size;
  }
  return { bytes, diskBytes };
}

async function ours(work: string): Promise<Run> {
  const repo = mkdtempSync(path.join(work, 'ours-'));
  const journal = new Journal(path.join(repo, 'journal.jsonl'));
  const provider = new LibvirtProvider({ runDir: mkdtempSync(path.join(os.tmpdir(), 'vmb-bench-run-')) });
  const host = new BackupHost(provider, journal, { hostName: 'bench', repositoryRoot: path.join(repo, 'r'), timeouts: DEFAULT_TIMEOUTS });
  const t0 = nowMs();
  const e = await host.enumerate();
  const c = host.classify({ ...e, vms: e.vms.filter((vm) => vm.id === DOMAIN) }, 'checkpoint');
  const set = await host.copy(await host.postSnapshot(await host.snapshot(await host.prepare(c))), { concurrency: 1, compress: false });
  const t1 = nowMs();
  journal.close();
  await fs.rm(provider.runDir, { recursive: true, force: true });
  const sizes = await du(path.join(repo, 'r'));
  return { tool: 'ours', startMs: t0, endMs: t1, wallMs: t1 - t0, ...sizes, frozenMs: set.vms[0].snapshot.frozenMs };
}

async function virtnbdbackup(work: string): Promise<Run> {
  const out = path.join(mkdtempSync(path.join(work, 'vnb-')), 'backup');
  const t0 = nowMs();
  // -l copy: a full copy without a checkpoint, as ours makes none
  await runProgram('virtnbdbackup', ['-d', DOMAIN, '-l', 'copy', '-o', out]);
  const t1 = nowMs();
  // its output holds the kernel and initramfs the domain boots from as well: counted in bytes
  return { tool: 'virtnbdbackup', startMs: t0, endMs: t1, wallMs: t1 - t0, ...(await du(out)) };
}

/** Record stamps of the live data disk (read from a -U copy after ext4's 5 s commit). */
async function recordStamps(work: string): Promise<number[]> {
  const raw = path.join(work, 'records.raw');
  await runProgram('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'raw', domainImage(DOMAIN, LAB), raw]);
  await runProgram('e2fsck', ['-E', 'journal_only', '-y', raw]).catch(() => undefined);
  const { stdout } = await runProgram('debugfs', ['-R', 'cat /records.log', raw]);
  await fs.rm(raw, { force: true });
  return stdout
    .split('\n')
    .map(parseRecord)
    .filter((r) => r !== undefined)
    .map((r) => r!.tsMs);
}

function longestGap(stamps: readonly number[], from: number, to: number): number {
  let gap = 0;
  for (let i = 1; i < stamps.length; i++) if (stamps[i] >= from && stamps[i - 1] <= to) gap = Math.max(gap, stamps[i] - stamps[i - 1]);
  return gap;
}

async function main(): Promise<void> {
  const runsArg = process.argv.indexOf('--runs');
  const n = runsArg > 0 ? Number(process.argv[runsArg + 1]) : 3;
  const work = mkdtempSync(path.join(os.tmpdir(), 'vmb-bench-lv-'));
  const runs: Run[] = [];
  try {
    for (let i = 0; i < n; i++) {
      // alternate who goes first: the guest's page cache and the host's favour neither
      const order = i % 2 === 0 ? [ours, virtnbdbackup] : [virtnbdbackup, ours];
      for (const f of order) {
        runs.push(await f(work));
        await sleep(1500);
      }
    }
    await sleep(6000); // ext4 commits the workload's records every 5 s
    const stamps = await recordStamps(work);
    for (const r of runs) r.guestGapMs = longestGap(stamps, r.startMs, r.endMs);
  } finally {
    await fs.rm(work, { recursive: true, force: true });
  }
  const summary = (tool: Run['tool']) => {
    const rs = runs.filter((r) => r.tool === tool);
    return {
      runs: rs.length,
      wallMs: Math.round(median(rs.map((r) => r.wallMs))),
      guestFrozenGapMs: Math.round(median(rs.map((r) => r.guestGapMs ?? NaN))),
      ...(tool === 'ours' ? { frozenMs: Math.round(median(rs.map((r) => r.frozenMs ?? NaN))) } : {}),
      bytesWritten: median(rs.map((r) => r.bytes)),
      diskBytesWritten: median(rs.map((r) => r.diskBytes)),
    };
  };
  console.log(JSON.stringify({ domain: DOMAIN, ours: summary('ours'), virtnbdbackup: summary('virtnbdbackup'), runs }, null, 2));
}

// the pipeline waits for its guardian on unref'd handles (Node-RED keeps its own process alive)
const alive = setInterval(() => undefined, 1000);
main().then(
  () => clearInterval(alive),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
