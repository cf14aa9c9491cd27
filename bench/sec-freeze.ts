// 1. Guest freeze window (freeze sent -> thaw acknowledged) over many backups of one lab VM, seen
//    three ways: on the agent's wire (a proxy), in the product's journal, and as the product
//    reports it (snapshot.frozenMs). 3. With `baseline`, after every backup the same base image is
//    copied by qemu-img alone (plain, and with the product's own flags); where the product's copy
//    time goes is timed inside the Node-RED process (probe.ts).
//    5. The Node-RED process's peak RSS over each backup (VmHWM reset before each).
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { convertArgs } from '../src/providers/qemu-img';
import { sha256File } from '../src/repository/repository';
import { addScenarios, backup, journalSpan, type Ctx } from './context';
import { allocatedBytes, imageInfo } from './images';
import { socketDirFor, type BenchVm } from './lab';
import { QgaProxy, type WireFreeze } from './qga-proxy';
import { GuestAgentClient } from '../src/providers/qemu/protocol';
import type { JournalEntry } from '../src/journal/journal';
import { flushedThenGone, log, phaseSummary, round, sleep, stats, timed, type Stats } from './util';

export interface FreezeSample {
  wireMs: number;
  journalMs?: number;
  productFrozenMs: number;
  agentFreezeMs?: number;
  agentThawMs?: number;
  /** journal: freeze done -> overlay done, less the transaction (Node-RED hop prepare -> snapshot) */
  hopMs?: number;
  /** the provider's snapshot call in the Node-RED process (the QMP transaction) */
  transactionMs?: number;
  /** journal: overlay done -> thaw intent (the freeze-status probe) */
  probeMs?: number;
  consistency: string;
  vcpuEvents: number;
  peakRssMiB: number;
  qemuImgPeakRssMiB: number;
  copyMs: number;
  copyStageMs: number;
  diskBytes: number;
  wallMs: number;
  /** qemu-img runs seen under the Node-RED process in this backup: ms by subcommand */
  children: Record<string, number>;
  phases: Record<string, { n: number; ms: number }>;
}

export interface BaselineSample {
  dataBytes: number;
  plainMs: number;
  productFlagsMs: number;
  /** the product's sha256File over the copy just written, by itself (one read, page cache warm) */
  sha256Ms?: number;
  /** then that copy's pages sent to the disk (fdatasync), by itself: with it the floor is a durable copy, as the product's is */
  flushMs?: number;
}

export interface FreezeResult {
  vm: string;
  dataDiskMiB: number;
  fillMiB: number;
  virtualSize: number;
  samples: FreezeSample[];
  cold?: FreezeSample;
  /** the agent alone: guest-fsfreeze-freeze, then at once guest-fsfreeze-thaw (wire ms) */
  agentFloor: Stats;
  /** the guest's own record (fsfreeze hook, /proc/uptime, 10 ms steps) of each measured backup */
  guest: Stats;
  wire: Stats;
  journal: Stats;
  product: Stats;
  baselines: BaselineSample[];
  mounts: { min: number; max: number };
}

export async function freezeSection(ctx: Ctx, vm: BenchVm, o: { runs: number; baseline: boolean; cold?: boolean }): Promise<FreezeResult> {
  const lab = ctx.lab!;
  for (const other of lab.vms.values()) if (other !== vm) await other.pause();
  await vm.resume();
  const proxy = new QgaProxy(path.join(ctx.work, 'proxy', `${vm.name}.qga`), vm.paths.qgaSocket);
  await fs.mkdir(path.dirname(proxy.listenPath), { recursive: true });
  await proxy.start();
  const socketDir = await socketDirFor(path.join(ctx.work, 'sockets'), vm, proxy.listenPath);
  const name = `freeze-${vm.name}`;
  await addScenarios(ctx, [{ name, socketDir, fallback: 'checkpoint' }]);
  const base = vm.paths.dataImage;
  const virtualSize = (await imageInfo(base)).virtualSize;
  const scratch = path.join(ctx.work, 'scratch');
  await fs.mkdir(scratch, { recursive: true });
  const samples: FreezeSample[] = [];
  const baselines: BaselineSample[] = [];
  let cold: FreezeSample | undefined;
  const mounts = { min: Infinity, max: 0 };
  const floor: number[] = [];
  const guestWindows: number[] = [];

  const one = async (): Promise<FreezeSample> => {
    const r = await backup(ctx, name);
    const v = r.set.vms[0];
    const wire = proxy.freezes[proxy.freezes.length - 1];
    if (!wire || wire.thawReplied === undefined || wire.freezeSent < r.startedAt)
      throw new Error(`${vm.name}: the proxy saw no complete freeze/thaw in this backup`);
    mounts.min = Math.min(mounts.min, r.sampler.mountsMin);
    mounts.max = Math.max(mounts.max, r.sampler.mountsMax);
    // the moment: the overlays' transaction before 1334ed9, the switch onto the point-in-time view since
    const transactionMs = (r.phases['provider.snapshot'] ?? r.phases['provider.makeView'])?.ms;
    const made = momentMade(r.journal, vm.name);
    const frozeAt = r.journal.find((e) => e.vm === vm.name && e.op === 'freeze' && e.phase === 'done');
    const thawAt = r.journal.find((e) => e.vm === vm.name && e.op === 'thaw' && e.phase === 'intent');
    const toOverlays = made && frozeAt ? Date.parse(made.t) - Date.parse(frozeAt.t) : undefined;
    return {
      wireMs: round(wire.thawReplied - wire.freezeSent, 2),
      journalMs: journalSpan(r.journal, vm.name, ['freeze', 'intent'], ['thaw', 'done']),
      productFrozenMs: v.snapshot.frozenMs,
      agentFreezeMs: wire.freezeReplied !== undefined ? round(wire.freezeReplied - wire.freezeSent, 2) : undefined,
      agentThawMs: wire.thawSent !== undefined ? round(wire.thawReplied - wire.thawSent, 2) : undefined,
      // the overlay intent is journalled before the freeze: the transaction is timed where it runs
      // (the probe's provider.snapshot), the hop is the rest of freeze acknowledged -> overlays made
      transactionMs: transactionMs !== undefined ? round(transactionMs, 2) : undefined,
      hopMs: toOverlays !== undefined && transactionMs !== undefined ? round(toOverlays - transactionMs, 2) : undefined,
      probeMs: made && thawAt ? Date.parse(thawAt.t) - Date.parse(made.t) : undefined,
      consistency: v.consistency,
      vcpuEvents: vm.runStateEvents(r.startedAt, r.endedAt).length,
      peakRssMiB: round(r.sampler.peakRssKiB / 1024),
      qemuImgPeakRssMiB: r.sampler.children()['qemu-img']?.peakRssMiB ?? 0,
      copyMs: v.copy.ms,
      copyStageMs: r.set.timings.copy.ms,
      diskBytes: v.copy.bytes,
      wallMs: Math.round(r.wallMs),
      children: r.sampler.childTimes(),
      phases: r.phases,
    };
  };

  try {
    if (o.cold) {
      cold = await one();
      log(
        `freeze ${vm.name}: cold start (first backup after Node-RED started): frozen ${cold.wireMs} ms on the wire, ${cold.productFrozenMs} ms by the product`,
      );
    }
    for (let i = 0; i < o.runs; i++) {
      const s = await one();
      samples.push(s);
      let line = `freeze ${vm.name} ${i + 1}/${o.runs}: wire ${s.wireMs} ms, journal ${s.journalMs} ms, product ${s.productFrozenMs} ms (agent freeze ${s.agentFreezeMs}, hop ${s.hopMs}, transaction ${s.transactionMs}, probe ${s.probeMs}, thaw ${s.agentThawMs}); copy ${s.copyMs} ms; peak RSS ${s.peakRssMiB} MiB`;
      if (o.baseline) {
        const b = await baselineCopy(base, scratch, i % 2 === 0);
        baselines.push(b);
        line += `; qemu-img alone ${Math.round(b.plainMs)} ms (product flags ${Math.round(b.productFlagsMs)} ms); in the product (ms): ${phaseSummary(s.phases, /qemu-img|sha256|fsync|Durable|describe/)}`;
      }
      log(line);
    }
    // The agent's floor: freeze and thaw back to back, nothing in between, same wire point.
    await sleep(3500); // the product closes its idle agent connection after 3 s
    const client = await GuestAgentClient.connect(proxy.listenPath, { timeoutMs: 30_000 });
    try {
      const from = proxy.freezes.length;
      for (let i = 0; i < o.runs; i++) {
        await client.execute('guest-fsfreeze-freeze');
        await client.execute('guest-fsfreeze-thaw');
        await sleep(1000); // backups come about this far apart: let the guest's workload catch up alike
      }
      floor.push(...proxy.freezes.slice(from).map((f: WireFreeze) => round(f.thawReplied! - f.freezeSent, 2)));
      guestWindows.push(...(await guestFreezeLog(client)));
    } finally {
      await client.close();
    }
  } finally {
    await proxy.close();
  }
  // the guest log holds [cold], runs, floor runs, in order
  const guestRuns = guestWindows.slice(-(o.runs + o.runs), -o.runs);
  log(
    `freeze ${vm.name}: agent alone (freeze then thaw at once) median ${stats(floor).median} ms; guest's own record median ${stats(guestRuns).median} ms`,
  );
  return {
    agentFloor: stats(floor),
    guest: stats(guestRuns),
    vm: vm.name,
    dataDiskMiB: vm.spec.dataSizeMiB,
    fillMiB: vm.spec.fillMiB,
    virtualSize,
    samples,
    cold,
    wire: stats(samples.map((s) => s.wireMs)),
    journal: stats(samples.map((s) => s.journalMs ?? NaN).filter((n) => !Number.isNaN(n))),
    product: stats(samples.map((s) => s.productFrozenMs)),
    baselines,
    mounts,
  };
}

/**
 * The journal entry that says the moment was made: `overlay done` before 1334ed9; since then the
 * view is journalled twice, planned (before the freeze) and made (in the frozen window): the
 * first view entry after the freeze is acknowledged.
 */
function momentMade(entries: JournalEntry[], vm: string): JournalEntry | undefined {
  const overlay = entries.find((e) => e.vm === vm && (e.op as string) === 'overlay' && e.phase === 'done');
  if (overlay) return overlay;
  const frozeAt = entries.findIndex((e) => e.vm === vm && e.op === 'freeze' && e.phase === 'done');
  return frozeAt < 0 ? undefined : entries.find((e, k) => k > frozeAt && e.vm === vm && e.op === 'view');
}

/**
 * qemu-img convert of the base image run by itself: plain, and with the product's own argv (less
 * its progress meter). Where the product's own copy time goes is timed inside it (probe.ts).
 */
export async function baselineCopy(base: string, scratch: string, plainFirst: boolean): Promise<BaselineSample> {
  const out = path.join(scratch, 'baseline.qcow2');
  const dataBytes = await allocatedBytes(base);
  const plain = async () => {
    await fs.rm(out, { force: true });
    const ms = await timed('qemu-img', ['convert', '-f', 'qcow2', '-O', 'qcow2', '-U', base, out]);
    await fs.rm(out, { force: true });
    return ms;
  };
  let sha256Ms: number | undefined;
  let flushMs: number | undefined;
  const productFlags = async () => {
    await fs.rm(out, { force: true });
    const ms = await timed(
      'qemu-img',
      convertArgs(base, out, { sourceFormat: 'qcow2', compress: false, forceShare: true }).filter((a) => a !== '-p'),
    );
    // the floor of any copy that is hashed for its manifest: one sha256 pass over what was written
    const t0 = performance.now();
    await sha256File(out);
    sha256Ms = performance.now() - t0;
    flushMs = await flushedThenGone(out);
    return ms;
  };
  let plainMs: number;
  let productFlagsMs: number;
  if (plainFirst) {
    plainMs = await plain();
    productFlagsMs = await productFlags();
  } else {
    productFlagsMs = await productFlags();
    plainMs = await plain();
  }
  return {
    dataBytes,
    plainMs,
    productFlagsMs,
    ...(sha256Ms !== undefined ? { sha256Ms } : {}),
    ...(flushMs !== undefined ? { flushMs } : {}),
  };
}

/**
 * The lab guest's fsfreeze hook appends "freeze <uptime>" before it freezes and "thaw <uptime>"
 * after it thaws to /run/qga/fsfreeze.log: the window as the guest itself saw it (ms).
 */
async function guestFreezeLog(client: GuestAgentClient): Promise<number[]> {
  const handle = await client.execute<number>('guest-file-open', { path: '/run/qga/fsfreeze.log', mode: 'r' });
  let text = '';
  try {
    for (;;) {
      const r = await client.execute<{ count: number; 'buf-b64': string; eof: boolean }>('guest-file-read', { handle, count: 65536 });
      text += Buffer.from(r['buf-b64'] ?? '', 'base64').toString('utf8');
      if (r.eof || r.count === 0) break;
    }
  } finally {
    await client.execute('guest-file-close', { handle }).catch(() => undefined);
  }
  const out: number[] = [];
  let frozeAt: number | undefined;
  for (const line of text.split('\n')) {
    const m = /^(freeze|thaw) (\d+(?:\.\d+)?)/.exec(line);
    if (!m) continue;
    const t = Number(m[2]) * 1000;
    if (m[1] === 'freeze') frozeAt = t;
    else if (frozeAt !== undefined) {
      out.push(round(t - frozeAt));
      frozeAt = undefined;
    }
  }
  return out;
}
