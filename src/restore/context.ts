// What a restore needs of its host, free of Node-RED: the repository, where it may write, where
// its journal is, and how to ask the hypervisor about a VM. The node builds it from the host
// config node; the command from its options.
import type { RestoreProgress } from './images';

export interface RestoreContext {
  repositoryRoot: string;
  /** the repository's host folder when a request names none */
  hostName: string;
  provider: 'qemu' | 'libvirt' | 'hyperv';
  /** QEMU host: where VMs' sockets are (a new VM's go there too, so the backups see it) */
  socketDir?: string;
  libvirtUri?: string;
  /** where a restore may create files (directory, new VM) */
  roots: string[];
  /** the restore journal's base directory (the host's journal directory) */
  journalDir: string;
  qemuImg?: string;
  /** the hypervisor's word on a VM: running, paused, off, ... (throws when it does not know it) */
  runState?: (vmId: string) => Promise<string>;
  onProgress?: (p: RestoreProgress) => void;
  log?: (text: string) => void;
}

export interface RestoredDisk {
  disk: string;
  file: string;
  format: 'qcow2' | 'raw';
  bytes: number;
}

export interface NewVm {
  hypervisor: 'qemu' | 'libvirt';
  name: string;
  uuid: string;
  macs: string[];
  started: boolean;
  /** resumed from the backup's saved memory (no boot) */
  resumed?: boolean;
  pid?: number;
  qmpSocket?: string;
  qgaSocket?: string;
  /** QEMU: the file holding the argument vector to start it again */
  commandFile?: string;
  /** drives of the original that the new VM does not have (pass-through, network) */
  dropped: string[];
  /** an instant restore: running after upMs, on its own disks (streamed out of the backup) after streamMs more */
  instant?: { upMs: number; streamMs: number };
}

export interface RestoreResult {
  mode: 'directory' | 'in-place' | 'new-vm';
  host: string;
  vm: string;
  backupId: string;
  method: string;
  consistency: string;
  /** the backups each disk was read through, newest first */
  chain: string[];
  target?: string;
  disks: RestoredDisk[];
  newVm?: NewVm;
  warnings: string[];
  startedAt: string;
  ms: number;
}
