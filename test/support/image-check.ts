// Read a backed-up disk image the way a sceptical restorer would: no guest, no mount.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { verifyRecords, type RecordsVerification } from '../../lab/guest-image';

export interface ImageFacts {
  needsRecovery: boolean;
  e2fsckExit: number;
  records: RecordsVerification;
}

function run(file: string, args: string[]): { status: number; stdout: string } {
  const r = spawnSync(file, args, { encoding: 'utf8', maxBuffer: 256 << 20 });
  return { status: r.status ?? -1, stdout: r.stdout ?? '' };
}

/** Convert to raw, then dumpe2fs -h, e2fsck -fn and debugfs cat /records.log on the copy. */
export function inspectImage(image: string, format = 'qcow2'): ImageFacts {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'vmb-img-'));
  try {
    const raw = path.join(dir, 'disk.raw');
    const conv = run('qemu-img', ['convert', '-U', '-f', format, '-O', 'raw', image, raw]);
    if (conv.status !== 0) throw new Error(`qemu-img convert ${image} failed`);
    const header = run('dumpe2fs', ['-h', raw]).stdout;
    const features = /Filesystem features:\s*(.*)/.exec(header)?.[1] ?? '';
    const fsck = run('e2fsck', ['-fn', raw]);
    const text = run('debugfs', ['-R', 'cat /records.log', raw]).stdout;
    return { needsRecovery: /\bneeds_recovery\b/.test(features), e2fsckExit: fsck.status, records: verifyRecords(text) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
