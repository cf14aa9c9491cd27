// The one small interface every hypervisor sits behind. The pipeline (src/pipeline) decides
// what to do and in what order; a provider only knows how to do one thing to one VM.
import type { ClassifiedVm, EnumeratedVm, Overlay } from '../contract/types';

export type ProviderKind = 'qemu' | 'hyperv' | 'libvirt';

export interface Progress {
  /** bytes done so far and bytes in all for this one artifact */
  done: number;
  total: number;
}

export interface ExportedFile {
  /** absolute path of the file written */
  path: string;
  bytes: number;
  format?: string;
  virtualSize?: number;
}

export interface ExportOptions {
  compress?: boolean;
  /** stops the copy when the backup set is aborted */
  signal?: AbortSignal;
  /** the disk's virtual size when the caller knows it already (saves asking the image) */
  virtualSize?: number;
}

export interface HostProvider {
  readonly kind: ProviderKind;
  /** The seeds' "writer": what enumerates the VMs as components (e.g. "QEMU QMP writer"). */
  readonly writerName: string;

  /** Every VM on the host, read-only: state, agent, guest file systems, disks with exclusions. */
  enumerate(): Promise<EnumeratedVm[]>;

  /**
   * Quiesce the guest (the guest takes its own consistency point). QEMU: guest-fsfreeze-freeze.
   * A provider whose snapshot quiesces by itself (Hyper-V production checkpoints) returns 0 and
   * sets `snapshotQuiesces`.
   */
  freeze(vm: ClassifiedVm, timeoutMs: number): Promise<{ frozenFilesystems: number }>;
  /** Thaw; must be safe to call when not frozen. Returns the file systems thawed. */
  thaw(vmId: string, timeoutMs: number): Promise<number>;
  readonly snapshotQuiesces: boolean;

  /** Saved state: stop the vCPUs and write the device and memory state to `file`. The VM stays stopped. */
  /** `pausedAt`: when the vCPUs stopped (ms since the epoch), when the provider knows it */
  saveState(vm: ClassifiedVm, file: string): Promise<{ bytes: number; pausedAt?: number }>;
  /** Return the VM to `previousState` (only "running" starts it again). Safe to call twice. */
  resume(vmId: string, previousState: string): Promise<void>;
  /** Current run state as the hypervisor reports it ("running", "paused", ...). */
  runState(vmId: string): Promise<string>;

  /** Point-in-time image of every included disk of the VM, atomic for the VM. */
  snapshot(vm: ClassifiedVm, backupId: string): Promise<Overlay[]>;
  /** Fold the overlays back into their bases and delete them. Safe to call when already merged. */
  merge(vmId: string, overlays: Overlay[]): Promise<void>;

  /** The VM's definition (command line, block graph, ...) as a JSON-serialisable object. */
  describe(vmId: string): Promise<Record<string, unknown>>;
  /** Copy the point-in-time image of one disk (overlay.base) to `dest`, sparse. */
  exportDisk(overlay: Overlay, dest: string, onProgress?: (p: Progress) => void, options?: ExportOptions): Promise<ExportedFile>;
  /** Read the copy back and check it holds what overlay.base holds; throws when it does not. */
  verifyDisk?(overlay: Overlay, file: string): Promise<void>;

  /** A backup set of these VMs ended: drop their idle connections now. Nothing about the VMs changes. */
  release?(vmIds: readonly string[]): Promise<void>;
  /** Drop connections; nothing about the VMs changes. */
  close(): Promise<void>;
}
