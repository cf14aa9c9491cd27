// What must hold before libvirt's backup job is begun, asked before anything is made (before the
// freeze, the managed save or the job): no other job on the domain, and room for the scratch files.
//
// Scratch files: libvirt's store of the view's old blocks (a block the guest overwrites before
// our copy read it goes there first). A full scratch volume makes libvirt's job fail (the backup
// of that VM fails), never a guest write; checked at classify (the snapshot-location rule, from
// enumerate's free space) and here, right before the job, with the same reserve as QEMU's
// fleecing images (src/classify/rules.ts).
import { promises as fs } from 'node:fs';
import { fleeceReserve } from '../../classify/rules';
import type { ClassifiedVm } from '../../contract/types';
import { formatBytes } from '../../summary';
import { jobType } from './backup-job';
import { parseKeyValues } from './parse';
import { VirshError, type Virsh } from './virsh';

/**
 * Refuse at once, before anything is made, a domain on which another job runs: libvirt runs one
 * job per domain and one block job per disk. Measured on libvirt 9.0: with a backup job of
 * somebody else's running, backup-begin (and managedsave) waits 30 s for the domain's job lock and
 * fails "cannot acquire state change lock"; with a block job (blockcopy, blockcommit, blockpull)
 * on a disk it fails "disk 'vda' has a blockjob assigned". Both queries answer during either job.
 */
export async function refuseOtherJobs(virsh: Virsh, domain: string, disks: readonly string[], timeoutMs: number): Promise<void> {
  const job = await jobType(virsh, domain, timeoutMs);
  const found: string[] = [];
  const busy: string[] = [];
  if (job.type !== 'None')
    found.push(`a ${job.operation ?? job.type} job runs (domjobinfo: ${job.type}${job.operation ? `, ${job.operation}` : ''})`);
  for (const disk of disks) {
    // --raw: " type=Block Copy" and its figures on stdout (without it the progress line goes to stderr); nothing when none runs
    const out = await virsh
      .run(['blockjob', '--domain', domain, '--path', disk, '--info', '--raw'], { timeoutMs })
      .catch((err: unknown) => {
        // an inactive domain runs no block job
        if (err instanceof VirshError && err.notRunning) return '';
        throw err;
      });
    const info = parseKeyValues(out.replace(/=/g, ':'));
    if (info.type) {
      busy.push(disk);
      found.push(`disk ${disk} has a block job (blockjob --info: ${info.type.slice(0, 80)})`);
    }
  }
  if (found.length === 0) return;
  const refusal = job.type !== 'None' ? 'cannot acquire state change lock' : `disk '${busy[0]}' has a blockjob assigned`;
  throw new OtherJobError(
    `domain ${domain}: ${found.join('; ')}; libvirt refuses a second job on it ("${refusal}"), so it is not backed up now and nothing was made on it. Back it up once that job has ended`,
  );
}

/** Another job (a user's own backup-begin, a block job) holds the domain: nothing of ours was made. */
export class OtherJobError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'OtherJobError';
  }
}

export async function checkScratchSpace(vm: ClassifiedVm): Promise<void> {
  const dir = vm.snapshotLocation.path;
  const s = await fs.statfs(dir).catch((err: NodeJS.ErrnoException) => {
    throw new Error(
      `scratch location ${dir} cannot be used (${err.code ?? err.message}); libvirt's backup job writes its scratch files there`,
    );
  });
  const free = s.bavail * s.bsize;
  const need = fleeceReserve(vm.disks.filter((d) => d.included).map((d) => d.virtualSize ?? 0));
  if (free < need)
    throw new Error(
      `scratch location ${dir} has ${formatBytes(free)} free; libvirt's scratch files for this VM need at least ${formatBytes(need)} (10% of its disks' size, at least 1 GiB): free space there`,
    );
}
