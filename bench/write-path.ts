// node dist/bench/write-path.js [--rounds=N] [--data-mib=N,N] [--dirs=DIR,DIR]
//
// Issue 22 item 2: which cache mode the copy's writer should use, on a file system with O_DIRECT
// (ext4 here) and one without (tmpfs). A copy is not done when the writer exits: the product then
// makes the file durable (fsync) and hashes it for the manifest, the two at once (see
// src/pipeline/copy.ts). So each variant is timed to the end of all three: `qemu-img convert -t
// MODE` of a qcow2 holding the data (the pull path's writer; the push path's qemu-nbd takes the
// same cache modes, see bench/copy-path.ts), then sha256 + fsync of its output. A mode the file
// system refuses (O_DIRECT on tmpfs) is reported as refused: the product's choice must not need it.
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fsyncFile } from '../src/repository/durable';
import { sha256File } from '../src/repository/repository';
import { runProgram } from '../src/util/run';
import { makeDataImage } from './images';
import { log, median } from './util';

const opt = (name: string, dflt: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1] ?? dflt;

const MODES = ['unsafe', 'writeback', 'none', 'directsync'] as const;

async function main(): Promise<void> {
  const rounds = Number(opt('rounds', '3'));
  const sizes = opt('data-mib', '256,2048').split(',').map(Number);
  const dirs = opt('dirs', `${os.tmpdir()},/dev/shm`).split(',');
  const rows: string[] = [];
  for (const dataMiB of sizes) {
    const src = path.join(os.tmpdir(), `vmb-wp-src-${dataMiB}.qcow2`);
    await makeDataImage(src, { virtualMiB: Math.max(dataMiB * 2, 1024), dataMiB, layout: 'spread' });
    try {
      for (const base of dirs) {
        const dir = await fs.mkdtemp(path.join(base, 'vmb-wp-'));
        const fsType = (await runProgram('stat', ['-f', '-c', '%T', dir])).stdout.trim();
        try {
          for (const mode of MODES) {
            const conv: number[] = [];
            const total: number[] = [];
            let refused = '';
            for (let r = 0; r < rounds && !refused; r++) {
              const out = path.join(dir, `out-${mode}.qcow2`);
              await fs.rm(out, { force: true });
              await runProgram('sync', []);
              const t0 = performance.now();
              try {
                await runProgram('qemu-img', ['convert', '-t', mode, '-f', 'qcow2', '-O', 'qcow2', '-m', '8', '-W', src, out]);
              } catch (err) {
                refused = (err as Error).message.split('\n')[0].slice(0, 120);
                break;
              }
              const t1 = performance.now();
              await Promise.all([sha256File(out), fsyncFile(out)]);
              const t2 = performance.now();
              conv.push(t1 - t0);
              total.push(t2 - t0);
              await fs.rm(out, { force: true });
            }
            const row = refused
              ? `| ${dataMiB} MiB | ${fsType} | ${mode} | refused: ${refused.replace(/\|/g, '/')} | | |`
              : `| ${dataMiB} MiB | ${fsType} | ${mode} | ${Math.round(median(conv))} | ${Math.round(median(total))} | ${total.map(Math.round).join(' ')} |`;
            rows.push(row);
            log(row);
          }
        } finally {
          await fs.rm(dir, { recursive: true, force: true });
        }
      }
    } finally {
      await fs.rm(src, { force: true });
    }
  }
  log(
    `load ${os
      .loadavg()
      .map((x) => x.toFixed(1))
      .join(' ')}`,
  );
  console.log('| data | file system | -t | convert (median ms) | convert + sha256 and fsync at once (median ms) | each round (ms) |');
  console.log('| --- | --- | --- | --- | --- | --- |');
  for (const r of rows) console.log(r);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
