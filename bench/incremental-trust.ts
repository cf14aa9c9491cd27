// Issue 20 item 3, end to end: the 1 % incremental through the real Node-RED flow (the chain now
// trusted by identity, not by hashing the parent) side by side with the bare QMP script
// (sec-incremental.ts's incrementalSection, unchanged), with fulls of 1 and 8 GiB of random data.
//   npm run build && node dist/bench/incremental-trust.js [--data-gib=1,8] [--rounds=2] [--work=DIR] [--out=FILE]
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { Ctx } from './context';
import { NodeRedProcess } from './nodered';
import { incrementalSection } from './sec-incremental';
import { loadAvg, log, median, rmrf } from './util';

const arg = (k: string, d: string) => process.argv.find((a) => a.startsWith(`--${k}=`))?.slice(k.length + 3) ?? d;

async function main(): Promise<void> {
  const work = path.resolve(arg('work', '/tmp/vmb-bench-inc-trust'));
  const sizes = arg('data-gib', '1,8').split(',').map(Number);
  const rounds = Number(arg('rounds', '2'));
  const rows = [];
  for (const gib of sizes) {
    await rmrf(work);
    await fs.mkdir(work, { recursive: true });
    const nr = await NodeRedProcess.start(path.join(work, 'node-red'));
    try {
      const ctx: Ctx = { work, quick: false, nr, scenarios: new Map() };
      const load = loadAvg();
      // the disk is the data: a full of `gib` GiB, then 1 % of it rewritten before each incremental
      const r = await incrementalSection(ctx, { rounds, diskMiB: gib * 1024, dataMiB: gib * 1024, fractions: [0.01] });
      const product = r.rounds.map((x) => x.incrementals[0].wallMs);
      const bare = r.rounds.map((x) => x.bare[0].ms);
      // the same script writing through qemu-nbd, as the product must (the VM's QEMU never opens
      // the repository): the floor that promise sets
      const viaNbd = r.rounds.map((x) => x.bare[0].viaNbd.ms);
      const prepare = r.rounds.map((x) => x.incrementals[0].stageMs.prepare ?? 0);
      const row = {
        fullGiB: gib,
        rounds,
        productMs: median(product),
        bareMs: median(bare),
        prepareMs: median(prepare),
        target: Math.round(1.3 * median(bare) + 100),
        bareViaNbdMs: median(viaNbd),
        targetViaNbd: Math.round(1.3 * median(viaNbd) + 100),
        product,
        bare,
        viaNbd,
        loadAtStart: load,
      };
      rows.push(row);
      log(`incremental-trust: ${JSON.stringify(row)}`);
    } finally {
      await nr.stop();
    }
  }
  await rmrf(work);
  await fs.writeFile(
    arg('out', 'bench/results-incremental-trust.json'),
    JSON.stringify({ date: new Date().toISOString(), rows }, null, 2) + '\n',
  );
}

main().catch((err: Error) => {
  console.error(err.stack ?? err.message);
  process.exitCode = 1;
});
