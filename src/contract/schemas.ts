// The backup-set document that travels in msg.payload, one JSON Schema per pipeline stage.
// The schemas are the source of truth: TypeScript types are derived from them (types.ts), the
// JSON files under schemas/ are emitted from them at build time, and ajv compiles them once.

import { EXCLUDED_BY, EXCLUDED_REASONS } from './exclusion';

export const STAGES = ['enumerated', 'classified', 'prepared', 'snapshotted', 'post-snapshot', 'copied'] as const;

const safeName = { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$' } as const;
const isoTime = { type: 'string', format: 'date-time' } as const;
const nonNegInt = { type: 'integer', minimum: 0 } as const;

const reason = {
  type: 'object',
  additionalProperties: false,
  required: ['rule', 'ok', 'detail'],
  properties: {
    rule: {
      enum: [
        'integration-service',
        'vm-running',
        'snapshot-location-same-volume',
        'basic-disks',
        'freezable-filesystems',
        'supported-guest-os',
      ],
    },
    ok: { type: 'boolean' },
    detail: { type: 'string' },
  },
} as const;

const disk = {
  type: 'object',
  additionalProperties: false,
  required: ['id', 'node', 'file', 'format', 'driver', 'included'],
  properties: {
    id: { type: 'string', minLength: 1, maxLength: 128 },
    node: { type: 'string', minLength: 1, maxLength: 128 },
    file: { type: 'string', maxLength: 4096 },
    format: { type: 'string', maxLength: 32 },
    driver: { type: 'string', maxLength: 32 },
    virtualSize: nonNegInt,
    volumeId: { type: 'string', maxLength: 64 },
    included: { type: 'boolean' },
    /**
     * A disk left out of the backup: why, and who decided it (src/contract/exclusion.ts). Only the
     * host's own configuration or the user leave a disk out by choice; anything else ('hypervisor',
     * 'product') is a disk that should be backed up and is not, and the summary is never ok then.
     */
    excludedReason: { enum: EXCLUDED_REASONS },
    excludedBy: { enum: EXCLUDED_BY },
    excludedDetail: { type: 'string', maxLength: 1024 },
    /** QEMU: the QOM path of the device's block backend (the view switches the device onto its filter) */
    qdev: { type: 'string', maxLength: 256 },
    /** change tracking on this disk: whether it can outlive the hypervisor process, and our records */
    tracking: {
      type: 'object',
      additionalProperties: false,
      required: ['persistent', 'records'],
      properties: {
        persistent: { type: 'boolean' },
        records: {
          type: 'array',
          maxItems: 16,
          items: {
            type: 'object',
            additionalProperties: false,
            required: ['name', 'recording', 'persistent', 'inconsistent', 'granularity'],
            properties: {
              name: { type: 'string', maxLength: 128 },
              recording: { type: 'boolean' },
              persistent: { type: 'boolean' },
              inconsistent: { type: 'boolean' },
              granularity: nonNegInt,
            },
          },
        },
      },
    },
  },
  // an excluded disk always says why and who excluded it; an included one carries no such claim
  if: { properties: { included: { const: false } }, required: ['included'] },
  then: {
    required: ['excludedReason', 'excludedBy'],
    properties: { excludedReason: { enum: EXCLUDED_REASONS }, excludedBy: { enum: EXCLUDED_BY } },
  },
  else: { properties: { excludedReason: false, excludedBy: false, excludedDetail: false } },
} as const;

const filesystem = {
  type: 'object',
  additionalProperties: false,
  required: ['mountpoint', 'type'],
  properties: {
    mountpoint: { type: 'string', maxLength: 4096 },
    type: { type: 'string', maxLength: 64 },
    device: { type: 'string', maxLength: 256 },
    disks: { type: 'array', maxItems: 64, items: { type: 'string', maxLength: 256 } },
    dynamic: { type: 'boolean' },
  },
} as const;

const agent = {
  type: 'object',
  additionalProperties: false,
  required: ['present', 'responding', 'freezeEnabled'],
  properties: {
    present: { type: 'boolean' },
    responding: { type: 'boolean' },
    freezeEnabled: { type: 'boolean' },
    version: { type: 'string', maxLength: 64 },
    error: { type: 'string', maxLength: 1024 },
  },
} as const;

const guest = {
  type: 'object',
  additionalProperties: false,
  required: ['filesystems'],
  properties: {
    os: {
      type: 'object',
      additionalProperties: false,
      properties: {
        id: { type: 'string', maxLength: 64 },
        name: { type: 'string', maxLength: 256 },
        version: { type: 'string', maxLength: 256 },
        kernel: { type: 'string', maxLength: 256 },
      },
    },
    filesystems: { type: 'array', maxItems: 256, items: filesystem },
    /** false when the host cannot see the guest's volumes (Hyper-V without published KVP data) */
    filesystemsVisible: { type: 'boolean' },
    /** set when the guest listed more file systems than `filesystems` holds: how many it listed */
    filesystemsListed: nonNegInt,
  },
} as const;

/** The provider's point-in-time view of one VM: what it names and makes, and the file each disk becomes. */
const view = {
  type: 'object',
  additionalProperties: false,
  required: ['disks', 'ref'],
  properties: {
    disks: {
      type: 'array',
      maxItems: 64,
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['disk', 'artifact', 'format'],
        properties: {
          disk: { type: 'string', maxLength: 128 },
          artifact: { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$' },
          format: { type: 'string', maxLength: 32 },
        },
      },
    },
    /** the provider's own record (node names, files, checkpoint), enough to undo it after a crash */
    ref: { type: 'object' },
  },
} as const;

/**
 * Per disk: a full or an incremental, and why. Drafted at prepare (before the view's moment, from
 * the parent and the change-tracking records); the copy node's policy (mode full, full every) may
 * still turn an incremental into a full: the plan the copy followed is on its output (copy.chain).
 */
const chainPlan = {
  type: 'object',
  additionalProperties: false,
  required: ['disk', 'mode', 'reason', 'detail', 'depth'],
  properties: {
    disk: { type: 'string', maxLength: 128 },
    mode: { enum: ['full', 'incremental'] },
    reason: { type: 'string', maxLength: 64 },
    detail: { type: 'string', maxLength: 1024 },
    depth: nonNegInt,
    parent: { type: 'string', pattern: '^[0-9]{8}T[0-9]{6}Z-[a-z0-9]{6}$' },
    backing: { type: 'string', maxLength: 512 },
    /** the tracking record the copy reads by (the parent's) */
    since: { type: 'string', maxLength: 128 },
    /** when the chain's full was made (fullEvery in days counts from it) */
    fullAt: { type: 'string', maxLength: 64 },
    /** the tracking record started for this backup: the next one reads by it */
    record: { type: 'string', maxLength: 128 },
    persistent: { type: 'boolean' },
    granularity: nonNegInt,
  },
} as const;

const prepareResult = {
  type: 'object',
  additionalProperties: false,
  required: ['action', 'previousState', 'ms'],
  properties: {
    action: { enum: ['freeze', 'save', 'none'] },
    previousState: { type: 'string', maxLength: 32 },
    frozenFilesystems: nonNegInt,
    savedStateFile: { type: 'string', maxLength: 4096 },
    savedStateBytes: nonNegInt,
    pausedAt: isoTime,
    frozenAt: isoTime,
    view,
    /** the chain as prepare can draft it: the copy node's policy may still make a disk a full (see copy.chain) */
    chainDraft: { type: 'array', maxItems: 64, items: chainPlan },
    ms: { type: 'number', minimum: 0 },
  },
} as const;

const snapshotResult = {
  type: 'object',
  additionalProperties: false,
  required: ['at', 'view', 'ms'],
  properties: {
    at: isoTime,
    view,
    /** vCPUs stopped to switch several disks of a guest that was not frozen at one moment */
    pausedMs: { type: 'number', minimum: 0 },
    thawedAt: isoTime,
    frozenMs: { type: 'number', minimum: 0 },
    thawedByWatchdog: { type: 'boolean' },
    ms: { type: 'number', minimum: 0 },
  },
} as const;

const postSnapshotResult = {
  type: 'object',
  additionalProperties: false,
  required: ['returnedTo', 'ms'],
  properties: {
    returnedTo: { type: 'string', maxLength: 32 },
    resumed: { type: 'boolean' },
    revertedToConsistencyPoint: { type: 'boolean' },
    downtimeMs: { type: 'number', minimum: 0 },
    ms: { type: 'number', minimum: 0 },
  },
} as const;

const copyResult = {
  type: 'object',
  additionalProperties: false,
  required: ['path', 'bytes', 'files', 'released', 'ms'],
  properties: {
    path: { type: 'string', maxLength: 4096 },
    bytes: nonNegInt,
    files: nonNegInt,
    /** the hypervisor shows nothing of ours left in the VM (the view taken away, checked) */
    released: { type: 'boolean' },
    /** bytes read out of the views, and how many of those the change tracking marked */
    bytesRead: nonNegInt,
    bytesChanged: nonNegInt,
    /** the chain plan the copy followed, per disk (the draft with the copy node's policy applied; as in the manifest) */
    chain: { type: 'array', maxItems: 64, items: chainPlan },
    ms: { type: 'number', minimum: 0 },
  },
} as const;

const method = { enum: ['child-vm-snapshot', 'checkpoint', 'saved-state', 'offline'] } as const;
const consistency = { enum: ['application', 'crash', 'offline'] } as const;

const vmBaseProperties = {
  id: safeName,
  name: { type: 'string', maxLength: 256 },
  state: { type: 'string', maxLength: 32 },
  agent,
  guest,
  disks: { type: 'array', maxItems: 64, items: disk },
  snapshotLocation: {
    type: 'object',
    additionalProperties: false,
    required: ['path'],
    properties: {
      path: { type: 'string', maxLength: 4096 },
      volumeId: { type: 'string', maxLength: 64 },
      /** a directory set aside for snapshot data (QEMU: the configured or default fleece dir), not beside the disks */
      dedicated: { type: 'boolean' },
      /** free space there when enumerated (bytes available to us) */
      freeBytes: nonNegInt,
    },
  },
  method,
  consistency,
  reasons: { type: 'array', maxItems: 16, items: reason },
  warnings: { type: 'array', maxItems: 256, items: { type: 'string', maxLength: 1024 } },
  /**
   * A VM that is defined on the host (a socket, a config) but cannot be backed up as it is (its
   * hypervisor does not answer, or what it reports is past a limit): enumerated with the reason,
   * so that classify fails the set or reports it by its policy instead of it vanishing.
   */
  unreachable: {
    type: 'object',
    additionalProperties: false,
    required: ['reason'],
    properties: { reason: { type: 'string', maxLength: 1024 } },
  },
  /** the hypervisor cannot save this VM's state, and why (libvirt: a transient domain cannot be managed-saved) */
  savedStateRefused: { type: 'string', maxLength: 1024 },
  prepare: prepareResult,
  snapshot: snapshotResult,
  postSnapshot: postSnapshotResult,
  copy: copyResult,
} as const;

const vmEnumeratedRequired = ['id', 'name', 'state', 'agent', 'guest', 'disks', 'snapshotLocation'] as const;
const vmClassifiedRequired = [...vmEnumeratedRequired, 'method', 'consistency', 'reasons', 'warnings'] as const;
const vmPreparedRequired = [...vmClassifiedRequired, 'prepare'] as const;
const vmSnapshottedRequired = [...vmPreparedRequired, 'snapshot'] as const;
const vmPostSnapshotRequired = [...vmSnapshottedRequired, 'postSnapshot'] as const;
const vmCopiedRequired = [...vmPostSnapshotRequired, 'copy'] as const;

const timing = {
  type: 'object',
  additionalProperties: false,
  required: ['startedAt', 'ms'],
  properties: { startedAt: isoTime, ms: { type: 'number', minimum: 0 } },
} as const;

function stageSchema<S extends (typeof STAGES)[number], R extends readonly string[]>(stage: S, vmRequired: R) {
  return {
    $id: `https://vm-backup.invalid/schemas/backup-set.${stage}.json`,
    title: `Backup set after the ${stage} stage`,
    type: 'object',
    additionalProperties: false,
    required: ['stage', 'backupId', 'host', 'writer', 'createdAt', 'vms', 'timings', 'warnings'],
    properties: {
      stage: { const: stage },
      backupId: { type: 'string', pattern: '^[0-9]{8}T[0-9]{6}Z-[a-z0-9]{6}$' },
      host: {
        type: 'object',
        additionalProperties: false,
        required: ['name', 'provider'],
        properties: { name: safeName, provider: { enum: ['qemu', 'hyperv', 'libvirt'] } },
      },
      writer: {
        type: 'object',
        additionalProperties: false,
        required: ['name', 'components'],
        properties: { name: { type: 'string', maxLength: 128 }, components: nonNegInt },
      },
      createdAt: isoTime,
      policy: {
        type: 'object',
        additionalProperties: false,
        required: ['fallback'],
        properties: {
          fallback: { enum: ['checkpoint', 'saved-state', 'fail'] },
          /** what classify did with VMs that are defined but unreachable */
          unreachable: { enum: ['fail', 'report'] },
        },
      },
      /**
       * What enumerate found on the host that looks like a VM but cannot be one (a QMP socket or an
       * inventory file whose name is not a valid VM id): NOT backed up, and the summary says so.
       */
      hostSkipped: {
        type: 'array',
        maxItems: 1000,
        items: {
          type: 'object',
          additionalProperties: false,
          required: ['name', 'reason'],
          properties: { name: { type: 'string', maxLength: 256 }, reason: { type: 'string', maxLength: 1024 } },
        },
      },
      /** VMs defined on the host but not in this set (unreachable, reported by policy), with why */
      skipped: {
        type: 'array',
        maxItems: 1000,
        items: {
          type: 'object',
          additionalProperties: false,
          required: ['vm', 'reason'],
          properties: { vm: safeName, reason: { type: 'string', maxLength: 1024 } },
        },
      },
      vms: {
        type: 'array',
        maxItems: 1000,
        items: {
          type: 'object',
          additionalProperties: false,
          required: vmRequired,
          properties: vmBaseProperties,
        },
      },
      timings: {
        type: 'object',
        additionalProperties: false,
        properties: {
          enumerate: timing,
          classify: timing,
          prepare: timing,
          snapshot: timing,
          postSnapshot: timing,
          copy: timing,
        },
      },
      warnings: { type: 'array', maxItems: 1024, items: { type: 'string', maxLength: 1024 } },
      repository: { type: 'string', maxLength: 4096 },
    },
  } as const;
}

export const schemas = {
  enumerated: stageSchema('enumerated', vmEnumeratedRequired),
  classified: stageSchema('classified', vmClassifiedRequired),
  prepared: stageSchema('prepared', vmPreparedRequired),
  snapshotted: stageSchema('snapshotted', vmSnapshottedRequired),
  'post-snapshot': stageSchema('post-snapshot', vmPostSnapshotRequired),
  copied: stageSchema('copied', vmCopiedRequired),
} as const;

/** Why a disk was copied whole (each a named reason, like the classification rules), or 'incremental'. */
export const CHAIN_FULL_REASONS = [
  'first-backup',
  'new-disk',
  'resized',
  'bitmap-missing',
  'bitmap-inconsistent',
  'bitmap-not-recording',
  'transient-bitmap-lost',
  'parent-missing',
  'parent-invalid',
  'raw-disk',
  'policy-full',
  'policy-full-every',
  'not-supported',
  // a VM whose hypervisor process is not running: nothing records its writes, so no chain goes through it
  'offline',
  // written by a prune, never by a backup: the links under this one went, and were merged into it
  'merged',
] as const;

const backupIdPattern = '^[0-9]{8}T[0-9]{6}Z-[a-z0-9]{6}$';
/** `../<parent backupId>/<file name>`: relative, one level up, never anywhere else */
const backingString = { type: 'string', pattern: '^\\.\\./[0-9]{8}T[0-9]{6}Z-[a-z0-9]{6}/[A-Za-z0-9][A-Za-z0-9._-]{0,127}$' } as const;

/**
 * How one disk file of a backup stands in its chain. A full stands alone (depth 0, no backing); an
 * incremental holds only the changed clusters and its qcow2 backing file is `backing`, the same
 * disk in its parent backup, relative to this backup's folder so the chain moves with the VM folder.
 * Optional in format @1: a file without it is a full from before incrementals.
 */
const diskChain = {
  type: 'object',
  additionalProperties: false,
  required: ['mode', 'reason', 'detail', 'depth', 'bytesRead'],
  properties: {
    mode: { enum: ['full', 'incremental'] },
    reason: { enum: [...CHAIN_FULL_REASONS, 'incremental'] },
    detail: { type: 'string', maxLength: 1024 },
    depth: { type: 'integer', minimum: 0, maximum: 100000 },
    parent: { type: 'string', pattern: backupIdPattern },
    backing: backingString,
    bitmap: {
      type: 'object',
      additionalProperties: false,
      required: ['name', 'granularity', 'persistent'],
      properties: {
        name: { type: 'string', minLength: 1, maxLength: 1023 },
        granularity: { type: 'integer', minimum: 512 },
        persistent: { type: 'boolean' },
      },
    },
    bytesChanged: nonNegInt,
    bytesRead: nonNegInt,
  },
  // the two modes cannot be mixed up: an incremental names its parent and backing file, a full neither
  if: { properties: { mode: { const: 'incremental' } } },
  then: {
    required: ['parent', 'backing'],
    properties: {
      reason: { const: 'incremental' },
      depth: { type: 'integer', minimum: 1 },
      parent: { type: 'string', pattern: backupIdPattern },
      backing: backingString,
    },
  },
  else: {
    properties: { reason: { enum: CHAIN_FULL_REASONS }, depth: { const: 0 }, parent: false, backing: false },
  },
} as const;

const manifestFile = {
  type: 'object',
  additionalProperties: false,
  required: ['name', 'kind', 'bytes', 'sha256'],
  properties: {
    name: { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$' },
    kind: { enum: ['disk', 'definition', 'saved-state'] },
    disk: { type: 'string', maxLength: 128 },
    format: { type: 'string', maxLength: 32 },
    virtualSize: nonNegInt,
    bytes: nonNegInt,
    sha256: { type: 'string', pattern: '^[0-9a-f]{64}$' },
    chain: diskChain,
  },
} as const;

export const manifestSchema = {
  $id: 'https://vm-backup.invalid/schemas/manifest.json',
  title: 'manifest.json of one VM backup',
  type: 'object',
  additionalProperties: false,
  required: [
    'format',
    'backupId',
    'host',
    'vm',
    'method',
    'consistency',
    'reasons',
    'excludedDisks',
    'warnings',
    'files',
    'timings',
    'createdAt',
    'completedAt',
  ],
  properties: {
    format: { const: 'vm-backup-manifest@1' },
    backupId: { type: 'string', pattern: '^[0-9]{8}T[0-9]{6}Z-[a-z0-9]{6}$' },
    host: safeName,
    provider: { enum: ['qemu', 'hyperv', 'libvirt'] },
    vm: safeName,
    vmName: { type: 'string', maxLength: 256 },
    method,
    consistency,
    reasons: { type: 'array', items: reason },
    excludedDisks: {
      type: 'array',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['id', 'reason'],
        properties: {
          id: { type: 'string' },
          file: { type: 'string' },
          driver: { type: 'string' },
          reason: { type: 'string' },
          /** who left it out (absent in manifests written before it was recorded) */
          by: { enum: EXCLUDED_BY },
          detail: { type: 'string' },
        },
      },
    },
    warnings: { type: 'array', items: { type: 'string' } },
    files: { type: 'array', items: manifestFile },
    /** the VM's place in its chain: the parent backup its incremental disks stack on, the deepest disk's depth */
    chain: {
      type: 'object',
      additionalProperties: false,
      required: ['depth'],
      properties: { parent: { type: 'string', pattern: backupIdPattern }, depth: { type: 'integer', minimum: 0, maximum: 100000 } },
    },
    totalBytes: nonNegInt,
    /** written by a prune: when, and the backups whose links were merged into this one's disks (none: the merge was further down its chain) */
    merges: {
      type: 'array',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['at', 'backups'],
        properties: { at: isoTime, backups: { type: 'array', items: { type: 'string', pattern: backupIdPattern } } },
      },
    },
    timings: {
      type: 'object',
      additionalProperties: { type: 'number', minimum: 0 },
    },
    frozenMs: { type: 'number', minimum: 0 },
    downtimeMs: { type: 'number', minimum: 0 },
    createdAt: isoTime,
    completedAt: isoTime,
  },
} as const;

export type StageName = (typeof STAGES)[number];
