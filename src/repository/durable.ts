// Making what the repository holds survive a power cut: a file's data, a directory's entries.
// The one owner of these helpers: the copy stage, the repository's publish and the flattening
// of a chain all make their files durable through here.
import { promises as fs } from 'node:fs';

/** fsync a file already written (a disk copy written by another process, a saved state). */
export async function fsyncFile(file: string): Promise<void> {
  await syncOpened(file, 'r+');
}

/** fsync a directory: the names created, renamed or removed in it survive a power cut. */
export async function fsyncDir(dir: string): Promise<void> {
  // a directory can only be opened for reading
  await syncOpened(dir, 'r');
}

async function syncOpened(p: string, flags: 'r' | 'r+'): Promise<void> {
  const handle = await fs.open(p, flags);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Write a file and fsync it, so that a published backup survives a power cut. */
export async function writeFileDurable(file: string, data: string | Buffer): Promise<void> {
  const handle = await fs.open(file, 'w', 0o640);
  try {
    await handle.writeFile(data);
    await handle.sync();
  } finally {
    await handle.close();
  }
}
