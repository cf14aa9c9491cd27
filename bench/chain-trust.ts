// Issue 20 item 3: what the nightly chain check costs before an incremental, the old way (the
// parent's file hashed whole, the chain walked by qemu-img) against the chain trusted by the
// identities recorded at publish (a stat and a header cluster per link, plus the verify records),
// with fulls of 1 and 8 GiB of random data. The check is findParent, as the chain plan calls it.
//   npm run build && node dist/bench/chain-trust.js [--work=DIR] [--sizes=1,8] [--runs=7] [--out=FILE]
// Page cache warm (the machine is shared: caches are not dropped); the old way's cost is then
// the hash (sha256 at ~1 GB/s here), cold it would be the read as well.
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { findParent } from '../src/chain';
import { recordIdentity } from '../src/chain/identity';
import { IDENTITY_RECORD } from '../src/repository/sidecars';
import { buildRepo, HOST, VM } from '../test/unit/prune/build-repo';
import { makeDataImage } from './images';
import { GiB, log, MiB, median, rmrf, round, run } from './util';

interface Row {
  fullGiB: number;
  /** the backup the next incremental stacks on: the full itself, or an incremental on it (depth 1..) */
  parent: string;
  depth: number;
  oldMs: number;
  trustedMs: number;
  oldRuns: number[];
  trustedRuns: number[];
}

async function measure(fn: () => Promise<unknown>, runs: number): Promise<number[]> {
  const out: number[] = [];
  await fn(); // warm: the page cache and the module caches
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    await fn();
    out.push(round(performance.now() - t0, 2));
  }
  return out;
}

async function main(): Promise<void> {
  const arg = (k: string, d: string) => process.argv.find((a) => a.startsWith(`--${k}=`))?.slice(k.length + 3) ?? d;
  const work = path.resolve(arg('work', '/tmp/vmb-bench-trust'));
  const sizes = arg('sizes', '1,8').split(',').map(Number);
  const runs = Number(arg('runs', '7'));
  const rows: Row[] = [];
  for (const gib of sizes) {
    await rmrf(work);
    await fs.mkdir(work, { recursive: true });
    const seed = path.join(work, 'seed.qcow2');
    log(`chain-trust: making a ${gib} GiB full of random data`);
    await makeDataImage(seed, { virtualMiB: gib * 1024, dataMiB: gib * 1024, layout: 'packed' });
    const raw = path.join(work, 'seed.raw');
    await run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', seed, raw]);
    await fs.rm(seed);
    for (const points of [1, 2, 8]) {
      const dir = path.join(work, `p${points}`);
      const times = Array.from({ length: points }, (_, i) => new Date(Date.UTC(2026, 10, 2 + i, 3)));
      // the incrementals: 1 % of the data rewritten each (two writes of 0.5 %), near the disk's end
      const repo = buildRepo(
        dir,
        times,
        [{ id: 'drive-virtio0', fullAt: () => false, size: gib * GiB, seed: raw, writeBase: gib * GiB - 64 * MiB }],
        {
          refs: false,
        },
      );
      const search = () => findParent({ root: repo.root, host: HOST, vm: VM, disk: 'drive-virtio0', virtualSize: gib * GiB });
      const check = await search();
      if (!check.ok) throw new Error(`no parent: ${check.detail}`);
      const oldRuns = await measure(search, runs);
      for (const id of repo.ids) await recordIdentity(path.join(repo.vmDir, id));
      const trusted = await search();
      if (!trusted.ok) throw new Error(`not trusted: ${trusted.detail}`);
      const trustedRuns = await measure(search, runs);
      rows.push({
        fullGiB: gib,
        parent: points === 1 ? 'the full' : `an incremental at depth ${points - 1}`,
        depth: points - 1,
        oldMs: median(oldRuns),
        trustedMs: median(trustedRuns),
        oldRuns,
        trustedRuns,
      });
      log(`chain-trust: ${gib} GiB, parent ${rows[rows.length - 1].parent}: old ${median(oldRuns)} ms, trusted ${median(trustedRuns)} ms`);
      for (const id of repo.ids) await fs.rm(path.join(repo.vmDir, id, IDENTITY_RECORD), { force: true });
      await rmrf(dir);
    }
    await fs.rm(raw, { force: true });
  }
  await rmrf(work);
  const out = arg('out', 'bench/results-trust.json');
  await fs.writeFile(out, JSON.stringify({ date: new Date().toISOString(), runs, rows }, null, 2) + '\n');
  console.log('| full | the next incremental stacks on | old check (ms, median) | trusted by identity (ms, median) |');
  console.log('| --- | --- | --- | --- |');
  for (const r of rows) console.log(`| ${r.fullGiB} GiB | ${r.parent} | ${r.oldMs} | ${r.trustedMs} |`);
}

main().catch((err: Error) => {
  console.error(err.stack ?? err.message);
  process.exitCode = 1;
});
