// qemu-img does the copying: sparse, optionally compressed, with its own progress meter.
import { runProgram } from '../util/run';

export interface ConvertOptions {
  sourceFormat: string;
  compress: boolean;
  /** -U: read an image that a running QEMU holds; safe for a base image nobody writes any more */
  forceShare: boolean;
  onProgress?: (fraction: number) => void;
  /** stops qemu-img (the backup set was aborted) */
  signal?: AbortSignal;
}

export function convertArgs(source: string, dest: string, o: ConvertOptions): string[] {
  return [
    'convert',
    '-p',
    '-f',
    o.sourceFormat,
    '-O',
    'qcow2',
    ...(o.forceShare ? ['-U'] : []),
    // qcow2 compressed clusters, zstd (QEMU >= 5.1), as the live copy writes them
    ...(o.compress ? ['-c', '-o', 'compression_type=zstd'] : []),
    // more coroutines and out-of-order writes: qcow2 output from a single source goes faster
    '-m',
    '8',
    '-W',
    source,
    dest,
  ];
}

/** Parse qemu-img's "(12.34/100%)" meter, which it redraws with carriage returns. */
export function parseProgress(chunk: string): number | undefined {
  const all = [...chunk.matchAll(/\((\d+(?:\.\d+)?)\/100%\)/g)];
  return all.length ? Number(all[all.length - 1][1]) / 100 : undefined;
}

export async function convert(qemuImg: string, source: string, dest: string, o: ConvertOptions): Promise<void> {
  await runProgram(qemuImg, convertArgs(source, dest, o), {
    ...(o.signal ? { signal: o.signal } : {}),
    onStdout: (chunk) => {
      const f = parseProgress(chunk);
      if (f !== undefined) o.onProgress?.(f);
    },
  });
}

export async function info(
  qemuImg: string,
  file: string,
  forceShare = true,
): Promise<{ 'virtual-size': number; format: string; 'actual-size'?: number; 'backing-filename'?: string }> {
  const { stdout } = await runProgram(qemuImg, ['info', '--output=json', ...(forceShare ? ['-U'] : []), file]);
  return JSON.parse(stdout);
}

/** Offline merge (no QEMU holds the chain): write the overlay's clusters into its backing file. */
export async function commit(qemuImg: string, overlay: string): Promise<void> {
  await runProgram(qemuImg, ['commit', '-q', overlay]);
}

/**
 * Read the copy back and compare what a guest would see in it with the source: exit 0 identical,
 * 1 different, 2 error. -U: the source is a base image the running VM still opens read-only.
 */
export async function compare(qemuImg: string, source: string, sourceFormat: string, copy: string, copyFormat: string): Promise<void> {
  try {
    await runProgram(qemuImg, ['compare', '-U', '-f', sourceFormat, '-F', copyFormat, source, copy]);
  } catch (err) {
    const code = (err as { code?: number | null }).code;
    if (code === 1) throw new Error(`verification failed: ${copy} does not hold what ${source} holds (qemu-img compare: content differs)`);
    throw new Error(`verification failed: ${copy} could not be compared with ${source}: ${(err as Error).message}`);
  }
}
