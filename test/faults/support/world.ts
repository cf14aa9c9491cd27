// What the fault suite checks after every case, measured from outside the product: QMP and the
// guest agent (run state, freeze status), the guest's own freeze log, the journal file, the image
// directories and the repository on disk.
import * as assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { promises as fs, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { GuestAgentClient, QmpClient } from '../../../src/providers/qemu/protocol';
import { overlaysUnder } from '../../support/bare-vms';
import { assertGraphClean } from '../../support/graph';
import type { JournalEntry } from '../../../src/journal/journal';

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export async function qmp<T = any>(socket: string, command: string, args?: Record<string, unknown>, timeoutMs = 10_000): Promise<T> {
  const c = await QmpClient.connect(socket, { timeoutMs });
  try {
    return await c.execute<T>(command, args);
  } finally {
    await c.close();
  }
}

export async function qga<T = any>(socket: string, command: string, args?: Record<string, unknown>, timeoutMs = 10_000): Promise<T> {
  const c = await GuestAgentClient.connect(socket, { timeoutMs, syncTimeoutMs: Math.min(timeoutMs, 5000) });
  try {
    return await c.execute<T>(command, args, { timeoutMs });
  } finally {
    await c.close();
  }
}

/** How long one of the suite's own agent commands may take once the agent answered its guest-sync. */
export const AGENT_COMMAND_MS = 30_000;
/** How long the suite waits for the agent to answer its guest-sync, per attempt. */
const AGENT_SYNC_MS = 10_000;

/**
 * One session with a guest agent for the suite's own checks and faults: connect and guest-sync
 * (the client syncs before its first command), then `fn` on that one connection, then close.
 * The agent channel serves one client at a time and a TCG guest under load answers slowly, so the
 * connect-and-sync is retried until `withinMs` (nothing was sent to the agent yet when it fails).
 * A failure inside `fn` is retried only for `idempotent` sessions: a command that timed out may
 * still run in the guest, and running a fault twice (a second SIGSTOP, a second write) would
 * change the case.
 */
export async function withAgent<T>(
  socket: string,
  fn: (c: GuestAgentClient) => Promise<T>,
  o: { withinMs?: number; idempotent?: boolean; what?: string } = {},
): Promise<T> {
  const withinMs = o.withinMs ?? 90_000;
  const deadline = Date.now() + withinMs;
  let last: unknown;
  for (let attempt = 0; ; attempt++) {
    if (attempt > 0) {
      if (Date.now() >= deadline) break;
      await sleep(300);
    }
    let c: GuestAgentClient;
    try {
      c = await GuestAgentClient.connect(socket, { timeoutMs: AGENT_COMMAND_MS, syncTimeoutMs: AGENT_SYNC_MS });
    } catch (err) {
      last = err; // no answer to the sync: nothing of ours ran in the guest; try again
      continue;
    }
    try {
      return await fn(c);
    } catch (err) {
      last = err;
      if (!o.idempotent) throw new Error(`${path.basename(socket)}: ${o.what ?? 'agent session'} failed: ${(err as Error).message}`);
    } finally {
      await c.close();
    }
  }
  throw new Error(
    `${path.basename(socket)}: ${o.what ?? 'agent session'} got no answer within ${withinMs} ms: ${(last as Error)?.message}`,
  );
}

/** An idempotent agent command, retried (after a fresh guest-sync) until it answers. */
export async function qgaRetry<T = any>(socket: string, command: string, args?: Record<string, unknown>, withinMs = 90_000): Promise<T> {
  return withAgent(socket, (c) => c.execute<T>(command, args, { timeoutMs: AGENT_COMMAND_MS }), {
    withinMs,
    idempotent: true,
    what: command,
  });
}

export interface VmRef {
  id: string;
  qmp: string;
  /** agent socket of a VM whose agent runs (freeze status is checked) */
  qga?: string;
}

/**
 * Every VM runs (not paused, not saved), QEMU shows nothing of ours in its graph and at most one
 * bitmap of ours per disk (assertGraphClean), every agent VM is thawed.
 */
export async function assertVmsUnharmed(vms: readonly VmRef[]): Promise<string> {
  const states: string[] = [];
  for (const vm of vms) {
    const status = (await qmp<{ status: string }>(vm.qmp, 'query-status')).status;
    assert.equal(status, 'running', `${vm.id} is ${status}, not running`);
    const bitmaps = await assertGraphClean(vm.qmp, vm.id);
    const note = bitmaps ? `, ${bitmaps} bitmap(s)` : '';
    if (vm.qga) {
      const fz = await qgaRetry<string>(vm.qga, 'guest-fsfreeze-status');
      assert.equal(fz, 'thawed', `${vm.id} guest is ${fz}`);
      states.push(`${vm.id} running+thawed${note}`);
    } else states.push(`${vm.id} running${note}`);
  }
  return states.join(', ');
}

/** No fleecing image (or any other file named by us) left beside the VMs' images. */
export async function assertNoFleeceFiles(dirs: readonly string[]): Promise<void> {
  for (const dir of dirs) assert.deepEqual(await overlaysUnder(dir), [], `fleecing images left under ${dir}`);
}

// ---- repository ----

/** Wait until `file` exists (e.g. a copy's staging directory: the copy has begun); false after `withinMs`. */
export async function waitForPath(file: string, withinMs: number, everyMs = 5): Promise<boolean> {
  for (const deadline = Date.now() + withinMs; Date.now() < deadline; await sleep(everyMs)) {
    if (
      await fs.stat(file).then(
        () => true,
        () => false,
      )
    )
      return true;
  }
  return false;
}

export async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string) => {
    for (const e of await fs.readdir(d, { withFileTypes: true }).catch(() => [])) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else out.push(p);
    }
  };
  await walk(dir);
  return out.sort();
}

/** sha256 of every file in the repository, by path. */
export async function repositoryState(root: string): Promise<Map<string, string>> {
  const state = new Map<string, string>();
  for (const f of await filesUnder(root))
    state.set(
      path.relative(root, f),
      createHash('sha256')
        .update(await fs.readFile(f))
        .digest('hex'),
    );
  return state;
}

/**
 * Earlier backups byte-identical; nothing of `backupId` published unless `published`; no staging
 * directory left; every published manifest's files match their sha256. Returns a short note.
 */
export async function assertRepository(
  root: string,
  before: Map<string, string>,
  backupId: string | undefined,
  published: boolean,
): Promise<string> {
  const after = await repositoryState(root);
  for (const [file, sha] of before) {
    if (file.includes('.partial-')) continue;
    assert.equal(after.get(file), sha, `earlier backup file ${file} changed or vanished`);
  }
  const staging = [...after.keys()].filter((f) => f.split(path.sep).some((p) => p.startsWith('.partial-')));
  assert.deepEqual(staging, [], 'staging (partial) directories left in the repository');
  const mine = [...after.keys()].filter((f) => backupId && f.split(path.sep).includes(backupId));
  if (!published) assert.deepEqual(mine, [], `files of the failed backup ${backupId} were published`);
  let checked = 0;
  for (const manifestFile of [...after.keys()].filter((f) => f.endsWith('manifest.json') && !before.has(f))) {
    const dir = path.dirname(manifestFile);
    const manifest = JSON.parse(readFileSync(path.join(root, manifestFile), 'utf8')) as { files: { name: string; sha256: string }[] };
    for (const f of manifest.files) {
      assert.equal(after.get(path.join(dir, f.name)), f.sha256, `${dir}/${f.name} does not match its manifest`);
      checked++;
    }
  }
  const earlier = [...before.keys()].filter((f) => f.endsWith('manifest.json')).length;
  return published
    ? `published (${mine.filter((f) => f.endsWith('manifest.json')).length} manifests, ${checked} files verified), ${earlier} earlier intact`
    : `nothing published, ${earlier} earlier intact`;
}

// ---- journal ----

export function readJournal(file: string): JournalEntry[] {
  let text = '';
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return [];
  }
  return text
    .split('\n')
    .filter((l) => l.trim())
    .flatMap((l) => {
      try {
        return [JSON.parse(l) as JournalEntry];
      } catch {
        return [];
      }
    });
}

/** Longest freeze-intent -> thaw-done span per VM in the journal (an open freeze counts until `now`). */
export function journalFrozenMs(entries: readonly JournalEntry[], now = Date.now()): Map<string, number> {
  const open = new Map<string, number>();
  const longest = new Map<string, number>();
  for (const e of entries) {
    if (!e.vm) continue;
    const key = `${e.backupId}/${e.vm}`;
    const t = Date.parse(e.t);
    if (e.op === 'freeze' && e.phase === 'intent') open.set(key, t);
    if (e.op === 'thaw' && e.phase === 'done' && open.has(key)) {
      longest.set(e.vm, Math.max(longest.get(e.vm) ?? 0, t - open.get(key)!));
      open.delete(key);
    }
  }
  for (const [key, t] of open) {
    const vm = key.split('/')[1];
    longest.set(vm, Math.max(longest.get(vm) ?? 0, now - t));
  }
  return longest;
}

// ---- the guest's own freeze log (lab guests: the fsfreeze hook appends "<phase> <uptime>") ----

export const HOOK_LOG = '/run/qga/fsfreeze.log';

/** freeze->thaw spans in ms from the guest's log (guest clock); an unmatched freeze is reported as Infinity. */
export function guestFrozenSpans(log: string): number[] {
  const spans: number[] = [];
  let frozenAt: number | undefined;
  for (const line of log.split('\n')) {
    const m = /^(freeze|thaw) ([0-9.]+)/.exec(line.trim());
    if (!m) continue;
    const t = Math.round(Number(m[2]) * 1000);
    if (m[1] === 'freeze') frozenAt ??= t;
    else if (frozenAt !== undefined) {
      spans.push(t - frozenAt);
      frozenAt = undefined;
    }
  }
  if (frozenAt !== undefined) spans.push(Infinity);
  return spans;
}

/** /proc/uptime counts in hundredths of a second. */
export const GUEST_CLOCK_TICK_MS = 10;

/**
 * The longest freeze the guest's own log shows must be within `limitMs`. Each end of a span is
 * read from a clock that counts in 10 ms ticks, so a measured span is the true one give or take
 * less than one tick: the limit is breached when the measurement proves it (more than one tick
 * over), not when the rounding might. Returns the longest span (undefined: no freeze logged).
 */
export function checkGuestFrozen(vmId: string, log: string, limitMs: number): number | undefined {
  const spans = guestFrozenSpans(log);
  const longest = spans.length ? Math.max(...spans) : undefined;
  if (longest !== undefined) {
    assert.ok(
      longest - GUEST_CLOCK_TICK_MS < limitMs,
      `${vmId} was frozen ${(longest / 1000).toFixed(2)} s by its own clock (limit ${fmtMs(limitMs)}); its log:\n${log.trim()}`,
    );
  }
  return longest;
}

export function fmtMs(ms: number | undefined): string {
  if (ms === undefined) return '-';
  if (!Number.isFinite(ms)) return 'still frozen';
  return `${(ms / 1000).toFixed(1)} s`;
}

// ---- the process table and QEMU's jobs ----

/** argv of every process, by pid (unreadable ones skipped). */
async function processes(): Promise<Map<number, string[]>> {
  const out = new Map<number, string[]>();
  for (const entry of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const argv = (await fs.readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '')).split('\0');
    if (argv[0]) out.set(Number(entry), argv);
  }
  return out;
}

/**
 * The guardian processes whose spec names `journal` (a journal file, or a directory of journals),
 * found by their argument vector: node .../guardian/guardian.js <spec>.
 */
export async function guardiansOf(journal: string): Promise<number[]> {
  const pids: number[] = [];
  for (const [pid, argv] of await processes())
    if (argv[1]?.endsWith(path.join('guardian', 'guardian.js')) && argv[2]?.includes(JSON.stringify(journal).slice(1, -1))) pids.push(pid);
  return pids;
}

/**
 * qemu-nbd processes writing a copy of ours (their socket is named vmbackup-nbd-*) into one of
 * `repositories` (other suites on this machine run their own), with their argv.
 */
export async function copyServers(repositories: readonly string[]): Promise<string[]> {
  return [...(await processes())]
    .filter(
      ([, argv]) =>
        /qemu-nbd$/.test(argv[0]) &&
        argv.some((a) => a.includes('vmbackup-nbd-')) &&
        argv.some((a) => repositories.some((r) => a.startsWith(r + path.sep))),
    )
    .map(([pid, argv]) => `${pid}: ${argv.join(' ')}`);
}

/** QEMU has no block job left (query-jobs): no copy of ours runs or waits to be dismissed. */
export async function assertNoJobs(vms: readonly VmRef[]): Promise<void> {
  for (const vm of vms) {
    const jobs = await qmp<{ id: string; status: string }[]>(vm.qmp, 'query-jobs');
    assert.deepEqual(
      jobs.map((j) => `${j.id} ${j.status}`),
      [],
      `${vm.id}: QEMU still has block jobs`,
    );
  }
}
