// A restore's context from an open backup host (what the restore and boot-test nodes have): its
// repository, journal directory, provider kind and, through the provider's own description of
// itself, the QEMU socket directory or the libvirt URI.
import * as path from 'node:path';
import type { BackupHost } from '../pipeline/backup-host';
import type { RestoreContext } from './context';

export function contextFromHost(host: BackupHost, roots: string[]): RestoreContext {
  const spec = host.provider.guardianSpec?.();
  const options = (spec?.options ?? {}) as { socketDir?: string; uri?: string };
  return {
    repositoryRoot: host.options.repositoryRoot,
    hostName: host.options.hostName,
    provider: host.provider.kind,
    ...(options.socketDir ? { socketDir: options.socketDir } : {}),
    ...(options.uri ? { libvirtUri: options.uri } : {}),
    roots,
    journalDir: path.dirname(host.journal.file),
    runState: (vmId) => host.provider.runState(vmId),
  };
}
