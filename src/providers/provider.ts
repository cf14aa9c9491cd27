// The one small interface every hypervisor sits behind. The pipeline (src/pipeline) decides
// what to do and in what order; a provider only knows how to do one thing to one VM, and names
// its own things: the point-in-time view it makes, the files a backup holds, its change tracking.
import type { ChainPlan, ClassifiedVm, EnumeratedVm, PointInTimeView } from '../contract/types';
import type { WrittenAs } from '../repository/qcow2-stream';

/** What makeView is told beside the VM and its planned view. */
export interface ViewOptions {
  /** the guest's file systems are frozen around this call */
  frozen: boolean;
  chain?: readonly ChainPlan[];
}

export type ProviderKind = 'qemu' | 'hyperv' | 'libvirt';

export interface Progress {
  /** bytes done so far and bytes in all for this one artifact */
  done: number;
  total: number;
}

/** How one disk is copied: all of it, or the clusters changed since the backup it stacks on. */
export type DiskCopyMode =
  | { mode: 'full' }
  | {
      mode: 'incremental';
      /** the qcow2 backing file of the new file: the parent backup's file, relative to the new one */
      backing: string;
      /** the change-tracking record (bitmap) that marks what changed since the parent */
      since: string;
    };

export interface ExportOptions {
  compress?: boolean;
  /** stops the copy when the backup set is aborted */
  signal?: AbortSignal;
  copy?: DiskCopyMode;
  /**
   * the copy will be checked (the copy node's Verify): a provider that checks a copy as it writes it
   * does so now, and its verifyDisk then has nothing left to read
   */
  verify?: boolean;
}

export interface ExportedFile {
  /** absolute path of the file written */
  path: string;
  bytes: number;
  format?: string;
  virtualSize?: number;
  /** bytes read out of the view */
  bytesRead?: number;
  /** bytes the change tracking marked as changed (incremental) */
  bytesChanged?: number;
  /** QEMU: how the disk left the view (pull: read from QEMU's NBD export; push: QEMU's backup job) and why not pulled */
  via?: 'pull' | 'push';
  pushReason?: string;
  /**
   * sha256 of the file, from its bytes as the provider wrote them (a writer of its own): the copy
   * step takes it instead of reading the file again
   */
  sha256?: string;
  /**
   * with `sha256`: the file's size, mtime (ns) and inode as its writer closed it; the copy step
   * refuses a file that is not as it was written (changed after the hash and the read-back check)
   */
  writtenAs?: WrittenAs;
}

/** What a provider's change tracking says about one disk, read at enumerate. */
export interface TrackingRecord {
  name: string;
  recording: boolean;
  persistent: boolean;
  inconsistent: boolean;
  granularity: number;
}

/** How a guardian process (outside Node-RED) rebuilds this provider to undo a set. */
export interface GuardianProviderSpec {
  kind: ProviderKind;
  options: Record<string, unknown>;
}

/** What enumerate found: the VMs, and warnings about the host that belong to no VM. */
export interface Enumeration {
  vms: EnumeratedVm[];
  warnings: string[];
  /** what looks like a VM but cannot be one (a socket or inventory file not named as a valid VM id): not backed up */
  skipped?: { name: string; reason: string }[];
}

export interface HostProvider {
  readonly kind: ProviderKind;
  /** The seeds' "writer": what enumerates the VMs as components (e.g. "QEMU QMP writer"). */
  readonly writerName: string;
  /**
   * 'agent': the pipeline freezes the guest around makeView (QEMU: guest-fsfreeze-freeze).
   * 'view': the view quiesces by itself (Hyper-V production checkpoints); freeze is never called.
   */
  readonly quiesce: 'agent' | 'view';

  /**
   * Every VM defined on the host, read-only: state, agent, guest file systems, disks with
   * exclusions; a VM that is defined but cannot be reached is listed with `unreachable`.
   */
  enumerate(): Promise<EnumeratedVm[]>;

  /** The same, with the warnings about the host that belong to no VM (used when present). */
  enumerateHost?(): Promise<Enumeration>;

  /** Quiesce the guest (the guest takes its own consistency point). */
  freeze(vm: ClassifiedVm, timeoutMs: number): Promise<{ frozenFilesystems: number }>;
  /** Thaw; must be safe to call when not frozen. Returns the file systems thawed. */
  thaw(vmId: string, timeoutMs: number): Promise<number>;
  /** 'frozen' or 'thawed' as the guest says; used to confirm the freeze held until the view was made. */
  freezeStatus?(vmId: string): Promise<string>;

  /** Saved state: stop the vCPUs and write the device and memory state to `file`. The VM stays stopped. */
  /** `pausedAt`: when the vCPUs stopped (ms since the epoch), when the provider knows it; `pausedMono`: the same moment on performance.now() */
  saveState(vm: ClassifiedVm, file: string): Promise<{ bytes: number; pausedAt?: number; pausedMono?: number }>;
  /** Return the VM to `previousState` (only "running" starts it again). Safe to call twice. */
  resume(vmId: string, previousState: string): Promise<void>;
  /** Current run state as the hypervisor reports it ("running", "paused", ...). */
  runState(vmId: string): Promise<string>;

  /**
   * What the point-in-time view of the VM's included disks will be: names, files, and the file
   * each disk becomes in the backup. Pure: the pipeline journals it before anything is made, so
   * that undo after a crash finds everything by it.
   */
  planView(vm: ClassifiedVm, backupId: string): PointInTimeView;
  /** Before the moment: whatever can be made ahead without touching the guest's path (fleecing images). */
  armView(vm: ClassifiedVm, view: PointInTimeView): Promise<void>;
  /**
   * The moment: atomic over the VM's disks. Returns the view as made (a provider may learn names
   * only now) and how long the vCPUs were stopped for it, if they were. `chain`: the prepared chain
   * plan per disk (which disks read changes since which record): a provider whose view is made from
   * its record (libvirt: an incremental backup-begin from a checkpoint) needs it at this moment.
   */
  makeView(vm: ClassifiedVm, view: PointInTimeView, opts: ViewOptions): Promise<{ view: PointInTimeView; pausedMs?: number }>;
  /**
   * Take the view away; proven by asking the hypervisor (the VM's graph holds nothing of ours),
   * throws while it is not true. Safe to repeat, and on a view that was only planned.
   */
  releaseView(vmId: string, view: PointInTimeView): Promise<void>;

  /** Copy one disk of the view to `dest` (artifact name from the view), sparse. */
  exportDisk(
    view: PointInTimeView,
    disk: string,
    dest: string,
    onProgress?: (p: Progress) => void,
    options?: ExportOptions,
  ): Promise<ExportedFile>;
  /** Read the copy back and check it holds what the view holds; throws when it does not. */
  verifyDisk?(view: PointInTimeView, disk: string, file: string): Promise<void>;

  /**
   * Change tracking (absent: every backup is a full). Start a record of every write from now on
   * (before the view's moment) for each listed disk; end one (removing it) once it is not needed.
   */
  tracking?: {
    start(vmId: string, disks: readonly { disk: string; name: string }[], view: PointInTimeView): Promise<void>;
    remove(vmId: string, disks: readonly { disk: string; name: string }[], view: PointInTimeView): Promise<void>;
    /**
     * The records on each disk of the view now (by disk id), as enumerate lists them. The chain is
     * planned from them at prepare: another set may have moved the chain on since enumerate.
     * Absent: enumerate's list is used.
     */
    list?(vmId: string, view: PointInTimeView): Promise<Map<string, TrackingRecord[]>>;
  };

  /** The VM's definition (command line, block graph, ...) as a JSON-serialisable object. */
  describe(vmId: string): Promise<Record<string, unknown>>;

  /** How a guardian rebuilds this provider outside Node-RED; absent: no guardian (recovery at start only). */
  guardianSpec?(): GuardianProviderSpec | undefined;
  /** At start: remove what a crash of an earlier process left that no journal names (Hyper-V checkpoints). */
  removeLeftovers?(): Promise<string[]>;

  /**
   * Close this process's guest-agent connection to the VM now (the agent serves one client): the
   * set's guardian process is about to freeze it and holds the agent until it thawed.
   */
  releaseAgent?(vmId: string): Promise<void>;
  /** A backup set of these VMs ended: drop their idle connections now. Nothing about the VMs changes. */
  release?(vmIds: readonly string[]): Promise<void>;
  /** Drop connections; nothing about the VMs changes. */
  close(): Promise<void>;
}
