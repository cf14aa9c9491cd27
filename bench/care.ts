// Issue 20 item 8: verify throughput against `sha256sum` + `qemu-img check` of the same files alone,
// and prune planning over 1,000 backups (scan of the manifests + the rules + the chain plan, a dry run).
//   npm run build && node dist/bench/care.js [--work=DIR] [--gib=1] [--incrementals=6] [--backups=1000] [--runs=3]
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import type { Manifest } from '../src/contract/types';
import { pruneVm, planPrune, type ScannedBackup } from '../src/prune';
import { runVerifyJob } from '../src/verify';
import { buildRepo, HOST, idAt, VM } from '../test/unit/prune/build-repo';
import { makeDataImage } from './images';
import { GiB, log, MiB, median, rmrf, round, run } from './util';

const arg = (k: string, d: string) => process.argv.find((a) => a.startsWith(`--${k}=`))?.slice(k.length + 3) ?? d;

async function time(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

async function verifyBench(work: string, gib: number, incrementals: number, runs: number) {
  const seedQ = path.join(work, 'seed.qcow2');
  await makeDataImage(seedQ, { virtualMiB: gib * 1024, dataMiB: gib * 1024, layout: 'packed' });
  const seed = path.join(work, 'seed.raw');
  await run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', seedQ, seed]);
  await fs.rm(seedQ);
  const times = Array.from({ length: incrementals + 1 }, (_, i) => new Date(Date.UTC(2026, 10, 2 + i, 3)));
  const repo = buildRepo(
    path.join(work, 'repo'),
    times,
    [{ id: 'drive-virtio0', fullAt: () => false, size: gib * GiB, seed, writeBase: gib * GiB - 64 * MiB }],
    {
      refs: false,
    },
  );
  await fs.rm(seed);
  const files: string[] = [];
  const disks: string[] = [];
  for (const id of repo.ids)
    for (const f of await fs.readdir(path.join(repo.vmDir, id))) {
      files.push(path.join(repo.vmDir, id, f));
      if (f.endsWith('.qcow2')) disks.push(path.join(repo.vmDir, id, f));
    }
  let bytes = 0;
  for (const f of files) bytes += (await fs.stat(f)).size;
  const product: number[] = [];
  const alone: number[] = [];
  const openssl: number[] = [];
  const check = async () => {
    for (const d of disks) await run('qemu-img', ['check', '-q', '-f', 'qcow2', d]);
  };
  for (let i = 0; i < runs; i++) {
    // one after the other, all warm: the same page cache for each
    product.push(await time(() => runVerifyJob(repo.vmDir, { proof: 'none', record: false })));
    // coreutils' sha256sum (no SHA extensions in Debian's build) and OpenSSL's (what Node hashes with)
    alone.push(await time(async () => (await run('sha256sum', files), await check())));
    openssl.push(await time(async () => (await run('openssl', ['dgst', '-sha256', ...files]), await check())));
  }
  await rmrf(path.join(work, 'repo'));
  const [p, a, o] = [median(product), median(alone), median(openssl)];
  const mbs = (ms: number) => round(bytes / MiB / (ms / 1000));
  const r = {
    productMs: round(p),
    sha256sumMs: round(a),
    opensslMs: round(o),
    productMBs: mbs(p),
    sha256sumMBs: mbs(a),
    opensslMBs: mbs(o),
  };
  return { gib, backups: repo.ids.length, bytes, ...r, product, sha256sum: alone, openssl };
}

/** 1,000 backups of one VM (nightly, a full every 30), manifests only: what a prune plans from. */
function syntheticManifest(id: string, i: number, parent: string | undefined, depth: number, time: Date): Manifest {
  return {
    format: 'vm-backup-manifest@1',
    backupId: id,
    host: HOST,
    provider: 'qemu',
    vm: VM,
    method: 'checkpoint',
    consistency: 'crash',
    reasons: [],
    excludedDisks: [],
    warnings: [],
    files: [
      {
        name: 'disk-drive-virtio0.qcow2',
        kind: 'disk',
        disk: 'drive-virtio0',
        format: 'qcow2',
        virtualSize: GiB,
        bytes: 1000 + i,
        sha256: 'a'.repeat(64),
        chain: parent
          ? {
              mode: 'incremental',
              reason: 'incremental',
              detail: '',
              depth,
              parent,
              backing: `../${parent}/disk-drive-virtio0.qcow2`,
              bytesRead: 1,
            }
          : { mode: 'full', reason: 'policy-full-every', detail: '', depth: 0, bytesRead: 1 },
      },
    ],
    chain: parent ? { parent, depth } : { depth: 0 },
    totalBytes: 1000 + i,
    timings: {},
    createdAt: time.toISOString(),
    completedAt: time.toISOString(),
  } as Manifest;
}

async function pruneBench(work: string, n: number, runs: number) {
  const rules = { keepDaily: 7, keepWeekly: 4, keepMonthly: 6, keepYearly: 2 };
  const vmDir = path.join(work, 'plan', HOST, VM);
  await fs.mkdir(vmDir, { recursive: true });
  const backups: ScannedBackup[] = [];
  let parent: string | undefined;
  for (let i = 0; i < n; i++) {
    const time = new Date(Date.UTC(2024, 0, 1, 1, 30) + i * 86_400_000);
    const id = idAt(time, i);
    const depth = i % 30;
    const m = syntheticManifest(id, i, depth ? parent : undefined, depth, time);
    const dir = path.join(vmDir, id);
    await fs.mkdir(dir);
    await fs.writeFile(path.join(dir, 'manifest.json'), JSON.stringify(m, null, 2) + '\n');
    backups.push({ id, dir, time, manifest: m, protected: false });
    parent = id;
  }
  const planOnly: number[] = [];
  const dryRun: number[] = [];
  let plan = planPrune(backups, rules);
  for (let i = 0; i < runs; i++) {
    planOnly.push(await time(async () => (plan = planPrune(backups, rules))));
    dryRun.push(await time(() => pruneVm(VM, { root: path.join(work, 'plan'), host: HOST, rules, dryRun: true })));
  }
  await rmrf(path.join(work, 'plan'));
  return {
    backups: n,
    kept: plan.keep.length,
    merges: plan.merges.length,
    planMs: round(median(planOnly), 2),
    dryRunMs: round(median(dryRun)),
  };
}

async function main(): Promise<void> {
  const work = path.resolve(arg('work', '/tmp/vmb-bench-care'));
  await rmrf(work);
  await fs.mkdir(work, { recursive: true });
  const runs = Number(arg('runs', '3'));
  log('care: verify throughput');
  const verify = await verifyBench(work, Number(arg('gib', '1')), Number(arg('incrementals', '6')), runs);
  log(`care: ${JSON.stringify(verify)}`);
  log('care: prune planning');
  const prune = await pruneBench(work, Number(arg('backups', '1000')), runs);
  log(`care: ${JSON.stringify(prune)}`);
  await rmrf(work);
  const out = arg('out', 'bench/results-care.json');
  await fs.writeFile(out, JSON.stringify({ date: new Date().toISOString(), runs, verify, prune }, null, 2) + '\n');
}

main().catch((err: Error) => {
  console.error(err.stack ?? err.message);
  process.exitCode = 1;
});
