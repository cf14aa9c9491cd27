// The programs still writing into a staging directory, ended before it is discarded: a push copy's
// qemu-nbd and a pull copy's qemu-img (see src/providers/qemu/pull.ts). Both are children of
// Node-RED; when Node-RED is SIGKILLed between starting a qemu-nbd and QEMU connecting to it,
// nothing ever connects, so it would wait (holding the deleted file) for ever; a qemu-img pulling
// would write on into a deleted file until the view's export goes. Found by their command line
// (the image path is in their argv), so only a writer whose target lies inside this staging
// directory is ever ended, whoever discards it (the live set, the guardian, recovery at the next start).
import { promises as fs } from 'node:fs';
import * as path from 'node:path';

const WRITERS = new Set(['qemu-nbd', 'qemu-img']);

/** Pids of qemu-nbd / qemu-img processes whose arguments name a file inside `dir`. */
export async function stagingWriters(dir: string): Promise<number[]> {
  const inside = path.resolve(dir) + path.sep;
  const pids: number[] = [];
  for (const entry of await fs.readdir('/proc').catch(() => [] as string[])) {
    if (!/^[0-9]+$/.test(entry) || Number(entry) === process.pid) continue;
    const argv = await fs.readFile(`/proc/${entry}/cmdline`, 'utf8').then(
      (t) => t.split('\0').filter(Boolean),
      () => [] as string[],
    );
    // the target is the last argument, or (compress) file.file.filename=<path> of --image-opts
    if (WRITERS.has(path.basename(argv[0] ?? '')) && argv.slice(1).some((a) => a.replace(/,,/g, ',').includes(inside)))
      pids.push(Number(entry));
  }
  return pids;
}

/** End them (SIGTERM, then SIGKILL after 2 s); resolves once none is left or 3 s passed. */
export async function endStagingWriters(dir: string): Promise<void> {
  for (let i = 0; i < 30; i++) {
    const pids = await stagingWriters(dir);
    if (pids.length === 0) return;
    for (const pid of pids) {
      try {
        process.kill(pid, i < 20 ? 'SIGTERM' : 'SIGKILL');
      } catch {
        // gone meanwhile
      }
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}
