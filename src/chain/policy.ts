// When a disk is backed up whole and when only its changes are: the user's policy (the copy node's
// `mode` and `fullEvery`), parsed once with an error naming the field, and the decision, a pure
// function of the policy, what the provider says of the disk's dirty bitmap and the parent that
// parent.ts found. A full is taken whenever the chain cannot be trusted, always with its reason.
import { CHAIN_FULL_REASONS } from '../contract/schemas';
import type { ManifestFile } from '../contract/types';

export type FullReason = (typeof CHAIN_FULL_REASONS)[number];
/** what a disk file's manifest entry says of its place in the chain */
export type DiskChain = NonNullable<ManifestFile['chain']>;

/** `fullEvery`: a chain holds at most `count` backups (its full included), or is at most `days` old */
export type FullEvery = { kind: 'count'; count: number } | { kind: 'days'; days: number };

export interface ChainPolicy {
  mode: 'incremental' | 'full';
  /** absent: a chain grows until it cannot be trusted */
  fullEvery?: FullEvery;
}

export const DEFAULT_CHAIN_POLICY: ChainPolicy = Object.freeze({ mode: 'incremental' });

export class ChainPolicyError extends Error {
  constructor(
    readonly field: 'mode' | 'fullEvery',
    detail: string,
  ) {
    super(`${field}: ${detail}`);
    this.name = 'ChainPolicyError';
  }
}

/** a count or days beyond these is a typo, not a policy */
const MAX_COUNT = 10000;
const MAX_DAYS = 3650;

/**
 * The copy node's settings as a policy. `mode`: 'incremental' (default when empty) or 'full'.
 * `fullEvery`: empty = never; a whole number N (or "N") = a new full once the chain holds N
 * backups; "Nd" = a new full once the chain's full is N days old.
 */
export function parseChainPolicy(config: { mode?: unknown; fullEvery?: unknown }): ChainPolicy {
  const mode = config.mode === undefined || config.mode === '' ? 'incremental' : config.mode;
  if (mode !== 'incremental' && mode !== 'full') {
    throw new ChainPolicyError('mode', `${JSON.stringify(mode)?.slice(0, 40)} must be "incremental" or "full"`);
  }
  const fe = config.fullEvery;
  if (fe === undefined || fe === null || (typeof fe === 'string' && fe.trim() === '')) return { mode };
  const text = typeof fe === 'number' ? String(fe) : typeof fe === 'string' ? fe.trim() : undefined;
  const m = text === undefined ? null : /^([0-9]{1,5})(d?)$/.exec(text);
  const n = m ? Number(m[1]) : NaN;
  if (!m || n < 1 || n > (m[2] ? MAX_DAYS : MAX_COUNT)) {
    throw new ChainPolicyError(
      'fullEvery',
      `${JSON.stringify(fe)?.slice(0, 40)} must be empty (never), a count of backups from 1 to ${MAX_COUNT} (e.g. 7), or days from 1 to ${MAX_DAYS} (e.g. 7d)`,
    );
  }
  return { mode, fullEvery: m[2] ? { kind: 'days', days: n } : { kind: 'count', count: n } };
}

/** What the provider reports of a disk's dirty bitmap at this backup's point in time. */
export type BitmapReport =
  | {
      state: 'ok';
      name: string;
      granularity: number;
      persistent: boolean;
      /** the backup the bitmap counts changes since, when the provider knows */ since?: string;
    }
  | { state: 'missing'; detail?: string }
  | { state: 'inconsistent'; name: string; detail?: string }
  | { state: 'not-recording'; name: string; detail?: string }
  | { state: 'transient-lost'; name?: string; detail?: string }
  /** a raw image, on which no persistent bitmap can be kept and no transient one is running */
  | { state: 'raw-disk'; detail?: string }
  /** the provider cannot track changes at all (e.g. no such mechanism) */
  | { state: 'not-supported'; detail?: string };

/** The previous backup of the disk an incremental may stack on, as parent.ts found and checked it. */
export interface ParentFound {
  ok: true;
  backupId: string;
  /** absolute path of the parent's backup folder and of its file of this disk */
  dir: string;
  file: string;
  /** the file name inside dir (the incremental's backing is `../<backupId>/<fileName>`) */
  fileName: string;
  /** the parent's own depth (0: it is the full) */
  depth: number;
  /** createdAt of the chain's full, for fullEvery in days */
  fullCreatedAt: string;
  /** the change-tracking record the parent started (its manifest's bitmap): what changed since it */
  record?: { name: string; persistent: boolean };
}

export interface ParentRefused {
  ok: false;
  reason: Extract<FullReason, 'first-backup' | 'new-disk' | 'resized' | 'parent-missing' | 'parent-invalid'>;
  detail: string;
}

export type ParentResult = ParentFound | ParentRefused;

export type ChainDecision =
  | { mode: 'full'; reason: FullReason; detail: string }
  | {
      mode: 'incremental';
      parent: ParentFound;
      depth: number;
      detail: string;
      bitmap: { name: string; granularity: number; persistent: boolean };
    };

const DAY_MS = 86_400_000;

/**
 * Full or incremental, and why. Order: the user's `mode` first (it is asked for), then the parent
 * (without a trusted parent there is nothing to stack on), then the bitmap (without a trusted
 * bitmap the changes are unknown), then `fullEvery`. `now` is the backup's point in time.
 */
export function decideChain(input: { parent: ParentResult; bitmap: BitmapReport; policy: ChainPolicy; now?: Date }): ChainDecision {
  const { parent, bitmap, policy } = input;
  const full = (reason: FullReason, detail: string): ChainDecision => ({ mode: 'full', reason, detail });
  if (policy.mode === 'full') return full('policy-full', 'the copy node\'s mode is "full"');
  if (!parent.ok) return full(parent.reason, parent.detail);
  switch (bitmap.state) {
    case 'missing':
      return full('bitmap-missing', bitmap.detail ?? 'the disk has no dirty bitmap of ours');
    case 'inconsistent':
      return full('bitmap-inconsistent', bitmap.detail ?? `bitmap ${bitmap.name} is inconsistent (QEMU did not close the image cleanly)`);
    case 'not-recording':
      return full('bitmap-not-recording', bitmap.detail ?? `bitmap ${bitmap.name} is not recording writes`);
    case 'transient-lost':
      return full('transient-bitmap-lost', bitmap.detail ?? "the disk's transient bitmap was lost with the QEMU process that held it");
    case 'raw-disk':
      return full('raw-disk', bitmap.detail ?? 'a raw image keeps no persistent bitmap and no transient one is running');
    case 'not-supported':
      return full('not-supported', bitmap.detail ?? 'the provider cannot track changed blocks of this disk');
    case 'ok':
      break;
  }
  // a bitmap counts the changes since one backup: stacked on any other, changes would be lost
  if (bitmap.since !== undefined && bitmap.since !== parent.backupId) {
    return full(
      'parent-missing',
      `bitmap ${bitmap.name} counts changes since backup ${bitmap.since}, but the newest usable backup of the disk is ${parent.backupId}`,
    );
  }
  const depth = parent.depth + 1;
  const every = policy.fullEvery;
  if (every?.kind === 'count' && depth + 1 > every.count) {
    return full('policy-full-every', `fullEvery ${every.count}: the chain already holds ${depth} backup${depth === 1 ? '' : 's'}`);
  }
  if (every?.kind === 'days') {
    const age = (input.now ?? new Date()).getTime() - Date.parse(parent.fullCreatedAt);
    // an unreadable date cannot prove the chain young enough
    if (!(age < every.days * DAY_MS)) {
      return full(
        'policy-full-every',
        `fullEvery ${every.days}d: the chain's full was made ${Number.isFinite(age) ? `${(age / DAY_MS).toFixed(1)} days ago` : 'at an unreadable time'} (${parent.fullCreatedAt})`,
      );
    }
  }
  const tracked = bitmap.persistent ? 'persistent' : 'transient (valid only while this QEMU process lives)';
  return {
    mode: 'incremental',
    parent,
    depth,
    bitmap: { name: bitmap.name, granularity: bitmap.granularity, persistent: bitmap.persistent },
    detail: `changes since ${parent.backupId} from ${tracked} bitmap ${bitmap.name}; depth ${depth}`,
  };
}

/**
 * The manifest entry for a disk copied after `decision`. `bytesRead`: what the copy read from the
 * VM's disk; `bytesChanged`: the dirty bytes the bitmap reported (incrementals).
 */
export function diskChainEntry(decision: ChainDecision, bytes: { bytesRead: number; bytesChanged?: number }): DiskChain {
  if (decision.mode === 'full') {
    return { mode: 'full', reason: decision.reason, detail: decision.detail.slice(0, 1024), depth: 0, bytesRead: bytes.bytesRead };
  }
  return {
    mode: 'incremental',
    reason: 'incremental',
    detail: decision.detail.slice(0, 1024),
    depth: decision.depth,
    parent: decision.parent.backupId,
    backing: backingString(decision.parent.backupId, decision.parent.fileName),
    bitmap: decision.bitmap,
    bytesRead: bytes.bytesRead,
    ...(bytes.bytesChanged !== undefined ? { bytesChanged: bytes.bytesChanged } : {}),
  } as DiskChain;
}

/** The qcow2 backing file string of an incremental: relative to its own backup folder. */
export function backingString(parentBackupId: string, fileName: string): string {
  return `../${parentBackupId}/${fileName}`;
}

/** The manifest's top-level `chain` of a VM: the newest parent its disks stack on, the deepest depth. */
export function vmChain(files: readonly Pick<ManifestFile, 'chain'>[]): { parent?: string; depth: number } {
  let depth = 0;
  let parent: string | undefined;
  for (const f of files) {
    if (!f.chain) continue;
    depth = Math.max(depth, f.chain.depth);
    if (f.chain.parent && (!parent || f.chain.parent > parent)) parent = f.chain.parent;
  }
  return parent ? { parent, depth } : { depth };
}
