// The backup-set document that travels in msg.payload, one JSON Schema per pipeline stage.
// The schemas are the source of truth: TypeScript types are derived from them (types.ts), the
// JSON files under schemas/ are emitted from them at build time, and ajv compiles them once.

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
    excludedReason: { enum: ['pass-through', 'network', 'read-only-media', 'no-medium'] },
  },
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
    ms: { type: 'number', minimum: 0 },
  },
} as const;

const overlay = {
  type: 'object',
  additionalProperties: false,
  required: ['disk', 'base', 'overlay', 'overlayNode', 'baseFormat'],
  properties: {
    disk: { type: 'string', maxLength: 128 },
    base: { type: 'string', maxLength: 4096 },
    baseFormat: { type: 'string', maxLength: 32 },
    overlay: { type: 'string', maxLength: 4096 },
    overlayNode: { type: 'string', maxLength: 128 },
    baseNode: { type: 'string', maxLength: 128 },
  },
} as const;

const snapshotResult = {
  type: 'object',
  additionalProperties: false,
  required: ['at', 'overlays', 'ms'],
  properties: {
    at: isoTime,
    overlays: { type: 'array', maxItems: 64, items: overlay },
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
  required: ['path', 'bytes', 'files', 'merged', 'ms'],
  properties: {
    path: { type: 'string', maxLength: 4096 },
    bytes: nonNegInt,
    files: nonNegInt,
    merged: { type: 'boolean' },
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
    properties: { path: { type: 'string', maxLength: 4096 }, volumeId: { type: 'string', maxLength: 64 } },
  },
  method,
  consistency,
  reasons: { type: 'array', maxItems: 16, items: reason },
  warnings: { type: 'array', maxItems: 256, items: { type: 'string', maxLength: 1024 } },
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
        properties: { fallback: { enum: ['checkpoint', 'saved-state', 'fail'] } },
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
  },
} as const;

export const manifestSchema = {
  $id: 'https://vm-backup.invalid/schemas/manifest.json',
  title: 'manifest.json of one VM backup',
  type: 'object',
  additionalProperties: false,
  required: ['format', 'backupId', 'host', 'vm', 'method', 'consistency', 'reasons', 'excludedDisks', 'warnings', 'files', 'timings', 'createdAt', 'completedAt'],
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
        properties: { id: { type: 'string' }, file: { type: 'string' }, driver: { type: 'string' }, reason: { type: 'string' } },
      },
    },
    warnings: { type: 'array', items: { type: 'string' } },
    files: { type: 'array', items: manifestFile },
    totalBytes: nonNegInt,
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
