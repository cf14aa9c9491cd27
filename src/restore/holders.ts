// Is a disk in use? Asked of the process table (any process holding the file open, or a QEMU
// whose command line names it) and, by the caller, of the hypervisor: a restore never writes a
// disk that a running VM has open.
import { promises as fs } from 'node:fs';

export interface Holder {
  pid: number;
  how: 'open' | 'command line';
  command: string;
}

/** Processes that have `file` (its real path) open, or name it on their command line. */
export async function holdersOf(files: readonly string[]): Promise<Holder[]> {
  const wanted = new Set(files);
  const out: Holder[] = [];
  const pids = (await fs.readdir('/proc').catch(() => [] as string[])).filter((n) => /^[0-9]+$/.test(n) && Number(n) !== process.pid);
  for (const p of pids) {
    const pid = Number(p);
    const cmd = await fs.readFile(`/proc/${p}/cmdline`, 'utf8').catch(() => '');
    const argv = cmd.split('\0');
    const command = argv.join(' ').slice(0, 200);
    if (argv.some((a) => [...wanted].some((f) => a === f || a.includes(`=${f},`) || a.endsWith(`=${f}`) || a.includes(`"${f}"`)))) {
      out.push({ pid, how: 'command line', command });
      continue;
    }
    const fds = await fs.readdir(`/proc/${p}/fd`).catch(() => [] as string[]);
    for (const fd of fds) {
      const link = await fs.readlink(`/proc/${p}/fd/${fd}`).catch(() => '');
      if (wanted.has(link)) {
        out.push({ pid, how: 'open', command });
        break;
      }
    }
  }
  return out;
}
