// qemu-img does the copying: sparse, optionally compressed, with its own progress meter.
import { runProgram } from '../../util/run';

export interface ConvertOptions {
  sourceFormat: string;
  compress: boolean;
  /** -U: read an image that a running QEMU holds; safe for a base image nobody writes any more */
  forceShare: boolean;
  onProgress?: (fraction: number) => void;
}

export function convertArgs(source: string, dest: string, o: ConvertOptions): string[] {
  return [
    'convert', '-p', '-f', o.sourceFormat, '-O', 'qcow2',
    ...(o.forceShare ? ['-U'] : []),
    ...(o.compress ? ['-c'] : []),
    // more coroutines and out-of-order writes: qcow2 output from a single source goes faster
    '-m', '8', '-W',
    source, dest,
  ];
}

/** Parse qemu-img's "(12.34/100%)" meter, which it redraws with carriage returns. */
export function parseProgress(chunk: string): number | undefined {
  const all = [...chunk.matchAll(/\((\d+(?:\.\d+)?)\/100%\)/g)];
  return all.length ? Number(all[all.length - 1][1]) / 100 : undefined;
}

export async function convert(qemuImg: string, source: string, dest: string, o: ConvertOptions): Promise<void> {
  await runProgram(qemuImg, convertArgs(source, dest, o), {
    onStdout: (chunk) => {
      const f = parseProgress(chunk);
      if (f !== undefined) o.onProgress?.(f);
    },
  });
}

export async function info(qemuImg: string, file: string, forceShare = true): Promise<{ 'virtual-size': number; format: string; 'actual-size'?: number; 'backing-filename'?: string }> {
  const { stdout } = await runProgram(qemuImg, ['info', '--output=json', ...(forceShare ? ['-U'] : []), file]);
  return JSON.parse(stdout);
}

/** Offline merge (no QEMU holds the chain): write the overlay's clusters into its backing file. */
export async function commit(qemuImg: string, overlay: string): Promise<void> {
  await runProgram(qemuImg, ['commit', '-q', overlay]);
}
