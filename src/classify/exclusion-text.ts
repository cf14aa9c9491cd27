// One wording for a disk left out, used by classify's warnings and the summary.
import { isDeliberate } from '../contract/exclusion';
import type { Disk } from '../contract/types';

const BY: Record<string, string> = {
  host: "the host's configuration",
  user: "the host node's exclude setting",
  hypervisor: 'the hypervisor',
  product: 'this product',
};

/** "disk X (driver file) NOT backed up: left out by <who> (<reason>): <detail>", plus what to do when it was not a choice. */
export function exclusionText(d: Pick<Disk, 'id' | 'driver' | 'file' | 'excludedReason' | 'excludedBy' | 'excludedDetail'>): string {
  const what = `${d.driver || 'no driver'}${d.file ? ` ${d.file}` : ''}`;
  const who = d.excludedBy ? (BY[d.excludedBy] ?? d.excludedBy) : 'an unknown decider';
  const why = `${d.excludedReason ?? 'excluded'}${d.excludedDetail ? `: ${d.excludedDetail}` : ''}`;
  const act = isDeliberate(d.excludedBy) ? '' : '; not a choice of yours or the host: back it up another way (from inside the guest)';
  return `disk ${d.id} (${what}) NOT backed up, left out by ${who} (${why})${act}`.slice(0, 1024);
}
