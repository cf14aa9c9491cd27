// Disk images with real (random, incompressible) data: sparse raw files filled where asked,
// ext4 file systems populated without mounting anything (mkfs.ext4 -d), then qcow2.
import { randomFillSync } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { MiB, run } from './util';

const CHUNK = 4 * MiB;

/** Write `bytes` of random data into `fd` starting at `offset`. */
async function fillRandom(handle: fs.FileHandle, offset: number, bytes: number): Promise<void> {
  const buf = Buffer.allocUnsafe(CHUNK);
  for (let done = 0; done < bytes; done += CHUNK) {
    const n = Math.min(CHUNK, bytes - done);
    randomFillSync(buf, 0, n);
    await handle.write(buf, 0, n, offset + done);
  }
}

/**
 * A qcow2 image of `virtualMiB` holding `dataMiB` of random data: packed at the start, or
 * spread in 4 MiB pieces evenly over the whole disk (the harder case for a sparse copy).
 */
export async function makeDataImage(file: string, o: { virtualMiB: number; dataMiB: number; layout: 'packed' | 'spread' }): Promise<void> {
  await fs.mkdir(path.dirname(file), { recursive: true });
  const raw = `${file}.raw-tmp`;
  const h = await fs.open(raw, 'w');
  try {
    await h.truncate(o.virtualMiB * MiB);
    if (o.layout === 'packed' || o.dataMiB >= o.virtualMiB) {
      await fillRandom(h, 0, Math.min(o.dataMiB, o.virtualMiB) * MiB);
    } else {
      const pieces = Math.ceil((o.dataMiB * MiB) / CHUNK);
      const stride = Math.floor((o.virtualMiB * MiB) / pieces / CHUNK) * CHUNK;
      for (let i = 0; i < pieces; i++) await fillRandom(h, i * stride, CHUNK);
    }
  } finally {
    await h.close();
  }
  try {
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, file]);
  } finally {
    await fs.rm(raw, { force: true });
  }
}

/**
 * An ext4 data disk for a lab VM (label "data", as lab-vms.ts makes them) of `sizeMiB`, holding
 * `fillMiB` of random data in /fill.bin, built with `mkfs.ext4 -d` (no mount), as qcow2.
 */
export async function makeExt4DataDisk(file: string, o: { sizeMiB: number; fillMiB: number }): Promise<void> {
  await fs.mkdir(path.dirname(file), { recursive: true });
  const work = `${file}.d`;
  const raw = `${file}.raw-tmp`;
  await fs.rm(work, { recursive: true, force: true });
  await fs.mkdir(work, { recursive: true });
  try {
    if (o.fillMiB > 0) {
      const h = await fs.open(path.join(work, 'fill.bin'), 'w');
      try {
        await fillRandom(h, 0, o.fillMiB * MiB);
      } finally {
        await h.close();
      }
    }
    const h = await fs.open(raw, 'w');
    await h.truncate(o.sizeMiB * MiB);
    await h.close();
    await run('mkfs.ext4', ['-F', '-q', '-L', 'data', '-E', 'lazy_itable_init=0,lazy_journal_init=0', '-d', work, raw]);
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, file]);
  } finally {
    await fs.rm(work, { recursive: true, force: true });
    await fs.rm(raw, { force: true });
  }
}

export async function imageInfo(file: string): Promise<{ virtualSize: number; actualSize: number }> {
  const info = JSON.parse(await run('qemu-img', ['info', '-U', '--output=json', file]));
  return { virtualSize: info['virtual-size'], actualSize: info['actual-size'] };
}

/** Bytes of allocated data in an image (what a sparse copy has to move). */
export async function allocatedBytes(file: string): Promise<number> {
  const map = JSON.parse(await run('qemu-img', ['map', '-U', '--output=json', file])) as { length: number; data: boolean; zero: boolean }[];
  return map.filter((e) => e.data && !e.zero).reduce((n, e) => n + e.length, 0);
}
