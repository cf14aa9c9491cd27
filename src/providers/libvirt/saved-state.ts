// Saved state through libvirt's managed save: `virsh managedsave` writes the domain's memory and
// device state where libvirt keeps it and stops the domain; the next `virsh start` restores it.
// Because libvirt owns that file, a backup process that dies while the domain is saved loses
// nothing: whoever starts the domain next (recovery, the user) gets it back exactly as it was.
// The backup keeps a copy of the file (restorable with `virsh restore`).
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { Virsh } from './virsh';

/** Where libvirt's system QEMU driver keeps managed save images (its compiled-in state dir). */
export const SYSTEM_SAVE_DIR = '/var/lib/libvirt/qemu/save';

export function managedSaveFile(uri: string, domainName: string): string {
  if (uri !== 'qemu:///system') {
    throw new Error(
      `saved state: the managed save image is only read on this machine's qemu:///system (uri is ${uri}); use the checkpoint fallback policy`,
    );
  }
  if (domainName.includes('/')) throw new Error(`saved state: domain name "${domainName}" cannot name a file`);
  return path.join(SYSTEM_SAVE_DIR, `${domainName}.save`);
}

/** Stop the domain into its managed save image and copy that image to `file`. */
export async function saveDomain(
  virsh: Virsh,
  domain: string,
  domainName: string,
  file: string,
  timeoutMs: number,
): Promise<{ bytes: number; pausedAt: number }> {
  const source = managedSaveFile(virsh.uri, domainName);
  const pausedAt = Date.now();
  await virsh.run(['managedsave', '--domain', domain], { timeoutMs });
  await fs.mkdir(path.dirname(file), { recursive: true });
  await fs.copyFile(source, file);
  return { bytes: (await fs.stat(file)).size, pausedAt };
}
