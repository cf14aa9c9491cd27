// 2. VM downtime, read from QEMU's own STOP / RESUME events on a second monitor the product does
//    not use. Checkpoint method: no event at all (vCPUs never stopped). Saved-state method:
//    STOP -> RESUME, against saving the same VM's memory alone (stop, migrate to a unix socket
//    written to a file and fsync'd, cont: what any saver has to do), run in the same loop.
import { createWriteStream, promises as fs } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { addScenarios, backup, journalSpan, type Ctx } from './context';
import { socketDirFor, type BenchVm } from './lab';
import { saveStateToFile } from '../src/providers/qemu/saved-state';
import { log, nowMs, round, sleep, stats, type Stats } from './util';

export interface CheckpointSample {
  method: string;
  stopEvents: number;
  resumeEvents: number;
  statusAfter: string;
  wallMs: number;
}
export interface SavedSample {
  method: string;
  /** QEMU's STOP -> RESUME event timestamps */
  downtimeMs: number;
  /** what the product reports (postSnapshot.downtimeMs) */
  productDowntimeMs: number;
  /** journal: save intent -> save done (the product's save, stop included) */
  saveMs?: number;
  stateBytes: number;
  /** journal: save done -> resume intent (snapshot stage and two Node-RED hops while stopped) */
  stoppedBetweenMs?: number;
  /** from QEMU's events: STOP -> MIGRATION setup -> MIGRATION completed -> RESUME */
  split?: DowntimeSplit;
  /** the Node-RED process during that backup: event loop delay and thread-pool wait (ms) */
  nodeRed?: Record<string, number>;
}
export interface DowntimeSplit {
  stopToMigrationMs: number;
  migrationMs: number;
  migrationToResumeMs: number;
}

/** STOP -> MIGRATION "setup" -> MIGRATION "completed" -> RESUME, from the events QEMU sent the observer. */
function splitOf(events: { event: string; at: number; data?: any }[]): DowntimeSplit | undefined {
  const stop = events.find((e) => e.event === 'STOP');
  const setup = events.find((e) => e.event === 'MIGRATION' && e.data?.status === 'setup' && stop && e.at >= stop.at);
  const done = events.find((e) => e.event === 'MIGRATION' && e.data?.status === 'completed' && setup && e.at >= setup.at);
  const resume = events.find((e) => e.event === 'RESUME' && done && e.at >= done.at);
  if (!stop || !setup || !done || !resume) return undefined;
  return {
    stopToMigrationMs: round(setup.at - stop.at, 1),
    migrationMs: round(done.at - setup.at, 1),
    migrationToResumeMs: round(resume.at - done.at, 1),
  };
}
/** saveMs: migrate command -> the whole stream written to the file (page cache), as the product waits; fsyncMs: the flush after */
export interface SaveAloneSample {
  saveMs: number;
  fsyncMs: number;
  stopToResumeMs: number;
  bytes: number;
  qemuTotalMs?: number;
  split?: DowntimeSplit;
}

export interface DowntimeResult {
  vm: string;
  memoryMiB: number;
  checkpoint: CheckpointSample[];
  saved: SavedSample[];
  alone: SaveAloneSample[];
  /** the product's saveStateToFile called from the benchmark process (not Node-RED) on the same VM */
  productFn?: { saveMs: number; split?: DowntimeSplit }[];
  savedStats: Stats;
  aloneStats: Stats;
  ratio: number;
}

export async function downtimeSection(ctx: Ctx, vm: BenchVm, o: { runs: number }): Promise<DowntimeResult> {
  const lab = ctx.lab!;
  for (const other of lab.vms.values()) if (other !== vm) await other.pause();
  await vm.resume();
  // MIGRATION events (setup, active, completed) on every monitor: where a stopped VM's time goes
  await vm.observer!.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
  const socketDir = await socketDirFor(path.join(ctx.work, 'sockets'), vm);
  const ck = `checkpoint-${vm.name}`;
  const ss = `saved-${vm.name}`;
  await addScenarios(ctx, [
    { name: ck, socketDir, fallback: 'checkpoint' },
    { name: ss, socketDir, fallback: 'saved-state' },
  ]);
  const checkpoint: CheckpointSample[] = [];
  const saved: SavedSample[] = [];
  const alone: SaveAloneSample[] = [];
  const productFn: { saveMs: number; split?: DowntimeSplit }[] = [];
  const scratch = path.join(ctx.work, 'scratch');
  await fs.mkdir(scratch, { recursive: true });

  for (let i = 0; i < o.runs; i++) {
    const c = await backup(ctx, ck);
    const ev = vm.runStateEvents(c.startedAt - 50, c.endedAt + 50);
    checkpoint.push({
      method: c.set.vms[0].method,
      stopEvents: ev.filter((e) => e.event === 'STOP').length,
      resumeEvents: ev.filter((e) => e.event === 'RESUME').length,
      statusAfter: await vm.status(),
      wallMs: Math.round(c.wallMs),
    });

    const s = await backup(ctx, ss);
    const v = s.set.vms[0];
    const events = vm.runStateEvents(s.startedAt - 50, s.endedAt + 50);
    const all = vm.events.filter((e) => e.at >= s.startedAt - 50 && e.at <= s.endedAt + 50);
    const stop = events.find((e) => e.event === 'STOP');
    const resume = events.find((e) => e.event === 'RESUME');
    if (!stop || !resume) throw new Error(`${vm.name}: saved-state backup without STOP/RESUME events`);
    saved.push({
      method: v.method,
      downtimeMs: round(resume.at - stop.at, 2),
      productDowntimeMs: v.postSnapshot.downtimeMs,
      saveMs: journalSpan(s.journal, vm.name, ['save', 'intent'], ['save', 'done']),
      stateBytes: v.prepare.savedStateBytes,
      stoppedBetweenMs: journalSpan(s.journal, vm.name, ['save', 'done'], ['resume', 'intent']),
      split: splitOf(all),
      nodeRed: Object.fromEntries(
        ['event loop delay, max', 'event loop delay, mean', 'thread pool wait, max', 'thread pool wait, mean'].map((k) => [
          k,
          round(s.phases[k]?.ms ?? NaN, 1),
        ]),
      ),
    });

    // the product's own save function, run from this process on the same VM: code against process
    const fnFrom = nowMs();
    const fnFile = path.join(scratch, 'product-fn.vmstate');
    let f0 = 0;
    // the bench's observer holds the VM's only QMP connection (to see its events): every exchange goes through it
    await saveStateToFile(
      (fn) => fn(vm.observer!),
      fnFile,
      120_000,
      async () => {
        await vm.observer!.execute('stop');
        f0 = nowMs();
      },
    );
    const productFnMs = nowMs() - f0;
    await vm.observer!.execute('cont');
    await fs.rm(fnFile, { force: true });
    productFn.push({ saveMs: productFnMs, split: splitOf(vm.events.filter((e) => e.at >= fnFrom)) });

    const aloneFrom = nowMs();
    const a = await saveAlone(vm, path.join(scratch, 'alone.vmstate'));
    a.split = splitOf(vm.events.filter((e) => e.at >= aloneFrom));
    alone.push(a);
    log(
      `downtime ${vm.name} ${i + 1}/${o.runs}: checkpoint ${checkpoint[i].stopEvents} STOP events; saved-state STOP->RESUME ${saved[i].downtimeMs} ms (product says ${saved[i].productDowntimeMs}, save ${saved[i].saveMs}, stopped between save and resume ${saved[i].stoppedBetweenMs}; Node-RED ${JSON.stringify(saved[i].nodeRed)}; QEMU ${JSON.stringify(saved[i].split)}); product's save function from the benchmark process ${round(productFn[i].saveMs)} ms (QEMU ${JSON.stringify(productFn[i].split)}); memory saved alone ${round(a.saveMs)} ms (${a.bytes} B; QEMU ${JSON.stringify(a.split)})`,
    );
  }
  const savedStats = stats(saved.map((s) => s.downtimeMs));
  const aloneStats = stats(alone.map((a) => a.saveMs));
  return {
    vm: vm.name,
    memoryMiB: vm.spec.memoryMiB ?? 256,
    checkpoint,
    saved,
    alone,
    productFn,
    savedStats,
    aloneStats,
    ratio: round(savedStats.median / aloneStats.median, 2),
  };
}

/**
 * Save the VM's memory with nothing else: stop, migrate (unthrottled) to a unix socket whose
 * stream is written to a file, cont. `saveMs` ends when the whole stream is in the file; the
 * fsync after it is timed apart (the product flushes the file after the VM runs again).
 */
async function saveAlone(vm: BenchVm, file: string): Promise<SaveAloneSample> {
  const qmp = vm.observer!;
  const sock = path.join(path.dirname(file), `alone-${process.pid}.sock`);
  await fs.rm(sock, { force: true });
  await fs.rm(file, { force: true });
  const server = net.createServer();
  const received = new Promise<void>((resolve, reject) => {
    server.once('connection', (conn) => {
      server.close();
      pipeline(conn, createWriteStream(file)).then(resolve, reject);
    });
  });
  await new Promise<void>((resolve) => server.listen(sock, resolve));
  // as fast as QEMU can: without migration's default 128 MiB/s throttle (the product lifts it too)
  const previous = (await qmp.execute<{ 'max-bandwidth': number }>('query-migrate-parameters'))['max-bandwidth'];
  await qmp.execute('migrate-set-parameters', { 'max-bandwidth': 64 * 1024 ** 3 });
  const t0 = nowMs();
  await qmp.execute('stop');
  const t1 = nowMs();
  await qmp.execute('migrate', { uri: `unix:${sock}` });
  await received;
  const t2 = nowMs();
  const h = await fs.open(file, 'r+');
  await h.sync();
  const bytes = (await h.stat()).size;
  await h.close();
  const fsyncMs = nowMs() - t2;
  let qemuTotalMs: number | undefined;
  for (let i = 0; i < 100; i++) {
    const st = await qmp.execute<{ status?: string; 'total-time'?: number }>('query-migrate');
    if (st.status === 'completed') {
      qemuTotalMs = st['total-time'];
      break;
    }
    if (st.status === 'failed') throw new Error('saving alone failed');
    await sleep(5);
  }
  await qmp.execute('cont');
  const t3 = nowMs();
  await qmp.execute('migrate-set-parameters', { 'max-bandwidth': previous });
  server.close();
  await fs.rm(sock, { force: true });
  await fs.rm(file, { force: true });
  return { saveMs: t2 - t1, fsyncMs, stopToResumeMs: t3 - t0, bytes, qemuTotalMs };
}
