// Where libvirt keeps a pull-mode view's old blocks (its scratch files: a block the guest
// overwrites before our copy read it goes there first), and whether there is room. A full
// scratch volume makes libvirt's job fail (the backup of that VM fails), never a guest write;
// checked at classify (the snapshot-location rule, from enumerate's free space) and here, right
// before the job, with the same reserve as QEMU's fleecing images (src/classify/rules.ts).
import { promises as fs } from 'node:fs';
import { fleeceReserve } from '../../classify/rules';
import type { ClassifiedVm } from '../../contract/types';
import { formatBytes } from '../../summary';

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
