// Change tracking on libvirt: its checkpoints (persistent dirty bitmaps in the qcow2 images, one
// per disk, named like the checkpoint). Unlike QEMU's provider we never add a bitmap ourselves:
// backup-begin makes the checkpoint the pipeline names for the backup (`vmbackup-<chain>-<backupId>`,
// see src/pipeline/chain-plan.ts; `vmbackup-<backupId>` before chains were named) in the same call that makes the view
// (--checkpointxml), so the new record starts exactly at the view's moment, and reads the parent's
// changes with `<incremental>` on each disk. A published backup removes the parent's checkpoint,
// an unpublished one its own (the same rotation as src/providers/qemu/tracking.ts).
//
// Measured on libvirt 9.0: a checkpoint cannot be made nor deleted while the domain is shut off
// ("Operation not supported: cannot delete checkpoint for inactive domain"); `checkpoint-delete`
// of a running domain removes the bitmap from the image (a child checkpoint keeps its own);
// `checkpoint-dumpxml --size` asks QEMU for each bitmap's size and gives none for a disk whose
// bitmap is not in the image (removed behind libvirt's back), and checkpoint-delete then fails
// with "bitmap ... not found in backing chain" (only --metadata deletes it).
import type { TrackingRecord } from '../provider';
import { child, children, encodeXml, parseXml } from './xml';
import { VirshError, type Virsh } from './virsh';

export const CHECKPOINT_PREFIX = 'vmbackup-';

/** A checkpoint name of ours made for backup `backupId` (whichever chain it names). */
export const isCheckpointOf = (name: string, backupId: string) => name.startsWith(CHECKPOINT_PREFIX) && name.endsWith(`-${backupId}`);
const GRANULARITY = 65536;

/** The checkpoint XML: a bitmap on each tracked disk, none on the others. */
export function checkpointXml(name: string, disks: readonly { name: string; bitmap: boolean }[]): string {
  const lines = disks.map((d) => `    <disk name='${encodeXml(d.name)}' checkpoint='${d.bitmap ? 'bitmap' : 'no'}'/>`);
  return `<domaincheckpoint>\n  <name>${encodeXml(name)}</name>\n  <disks>\n${lines.join('\n')}\n  </disks>\n</domaincheckpoint>\n`;
}

/** The disks a checkpoint has a bitmap on, from checkpoint-dumpxml (with --size: the size QEMU reports). */
export function parseCheckpointDisks(xml: string): { disk: string; bitmap: string; size?: number }[] {
  const root = parseXml(xml);
  return children(child(root, 'disks'), 'disk')
    .filter((d) => d.attrs.checkpoint === 'bitmap')
    .map((d) => ({
      disk: d.attrs.name ?? '',
      bitmap: d.attrs.bitmap ?? d.attrs.name ?? '',
      ...(d.attrs.size !== undefined ? { size: Number(d.attrs.size) } : {}),
    }));
}

/**
 * Our checkpoints of a running domain, per disk, as change-tracking records. A checkpoint whose
 * bitmaps QEMU cannot size (lost, or left inconsistent by a crash) is reported inconsistent, so
 * the chain plan makes a full (reason bitmap-inconsistent) instead of a backup-begin that fails.
 */
export async function checkpointRecords(virsh: Virsh, domain: string, timeoutMs: number): Promise<Map<string, TrackingRecord[]>> {
  const out = new Map<string, TrackingRecord[]>();
  const names = (await virsh.run(['checkpoint-list', '--domain', domain, '--name'], { timeoutMs }))
    .split('\n')
    .map((l) => l.trim())
    .filter((n) => n.startsWith(CHECKPOINT_PREFIX));
  for (const name of names) {
    let disks: { disk: string; bitmap: string; size?: number }[];
    let inconsistent = false;
    try {
      disks = parseCheckpointDisks(
        await virsh.run(['checkpoint-dumpxml', '--domain', domain, '--checkpointname', name, '--no-domain', '--size'], { timeoutMs }),
      );
    } catch (err) {
      if (!(err instanceof VirshError)) throw err;
      // the metadata is there, the bitmaps are not usable: which disks it covered is still known
      disks = parseCheckpointDisks(
        await virsh.run(['checkpoint-dumpxml', '--domain', domain, '--checkpointname', name, '--no-domain'], { timeoutMs }),
      );
      inconsistent = true;
    }
    for (const d of disks) {
      const rec: TrackingRecord = {
        name,
        recording: true,
        persistent: true,
        inconsistent: inconsistent || d.size === undefined,
        granularity: GRANULARITY,
      };
      out.set(d.disk, [...(out.get(d.disk) ?? []), rec]);
    }
  }
  return out;
}

/**
 * Delete one checkpoint of ours; nothing to do when it is not there. A shut-off domain's
 * checkpoint cannot be deleted (libvirt 9.0): it is left, harmless (its bitmap only records
 * more), and the next published backup of the running domain removes it as a stale record.
 * Returns what happened.
 */
export async function deleteCheckpoint(
  virsh: Virsh,
  domain: string,
  name: string,
  timeoutMs: number,
): Promise<'deleted' | 'absent' | 'left-inactive'> {
  if (!name.startsWith(CHECKPOINT_PREFIX)) throw new Error(`refusing to delete checkpoint ${name}: not one this product made`);
  try {
    await virsh.run(['checkpoint-delete', '--domain', domain, '--checkpointname', name], { timeoutMs });
    return 'deleted';
  } catch (err) {
    if (!(err instanceof VirshError)) throw err;
    if (/no domain checkpoint with matching name|checkpoint not found/i.test(err.detail)) return 'absent';
    if (/inactive domain/i.test(err.detail) || err.notRunning) return 'left-inactive';
    // the bitmap went from the image (replaced, or removed by hand): libvirt refuses to delete
    // the checkpoint ("bitmap ... not found in backing chain"), so only its metadata is deleted;
    // else the removal would fail on every retry and hold the VM
    if (/bitmap .* not found/i.test(err.detail)) {
      await virsh.run(['checkpoint-delete', '--domain', domain, '--checkpointname', name, '--metadata'], { timeoutMs });
      return 'deleted';
    }
    throw err;
  }
}
