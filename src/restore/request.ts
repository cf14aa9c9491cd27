// What a restore is asked to do: one schema for the node's message (msg.payload, over the node's
// settings) and the command's options, so both refuse the same things, naming the field.
import type { FromSchema } from 'json-schema-to-ts';
import { assertDocument, ContractError } from '../contract/validate';
import { RestoreRefused } from './refused';

const safeName = { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$' } as const;
const backupId = { type: 'string', pattern: '^([0-9]{8}T[0-9]{6}Z-[a-z0-9]{6}|latest)$' } as const;
const filePath = { type: 'string', minLength: 1, maxLength: 4096 } as const;

export const RESTORE_MODES = ['directory', 'in-place', 'new-vm'] as const;

export const restoreRequestSchema = {
  $id: 'vm-backup-restore-request@1',
  type: 'object',
  additionalProperties: false,
  required: ['mode', 'vm'],
  properties: {
    mode: { enum: RESTORE_MODES },
    /** the repository's host folder (default: the host node's host name) */
    host: safeName,
    vm: safeName,
    /** a backup id of the VM, or latest (default) */
    backupId,
    /** disk ids as the manifest lists them (default: every disk of the backup) */
    disks: { type: 'array', minItems: 1, maxItems: 64, uniqueItems: true, items: { type: 'string', minLength: 1, maxLength: 128 } },
    /** directory / new-vm: the image format written (default qcow2) */
    format: { enum: ['qcow2', 'raw'] },
    /** directory / new-vm: the folder to create, under a configured restore root */
    target: filePath,
    /** new-vm: its name (default <vm>-restored) */
    name: { type: 'string', pattern: '^[A-Za-z0-9{][A-Za-z0-9._{}-]{0,63}$' },
    /** new-vm: qemu or libvirt (default: the host's provider) */
    hypervisor: { enum: ['qemu', 'libvirt'] },
    /** new-vm: start it (default false: defined, left off) */
    start: { type: 'boolean' },
    /** new-vm: a saved-state backup resumes from its saved memory when started (default true) */
    resume: { type: 'boolean' },
    /** new-vm: keep the network devices (new MACs) or start without any (default keep) */
    network: { enum: ['keep', 'none'] },
    /** new-vm (QEMU, started): run at once on the backup, the disks streamed into place meanwhile */
    instant: { type: 'boolean' },
    /** in-place: keep each replaced image as <image>.before-restore (default false) */
    keepOld: { type: 'boolean' },
  },
} as const;

export type RestoreRequest = FromSchema<typeof restoreRequestSchema>;

/** The request checked; a ContractError becomes a refusal naming the field (the JSON pointer's first part). */
export function checkRequest<T>(key: string, schema: object, doc: unknown): T {
  try {
    return assertDocument<T>(key, schema, doc, 'msg.payload');
  } catch (err) {
    if (err instanceof ContractError) {
      const missing = /^required: (.+)$/.exec(err.rule)?.[1];
      const extra = /^additionalProperties: (.+)$/.exec(err.rule)?.[1];
      const field = missing ?? extra ?? (err.pointer.split('/')[1] || 'payload');
      throw new RestoreRefused(field, err.message.replace(/^msg\.payload: /, ''));
    }
    throw err;
  }
}

export function checkRestoreRequest(doc: unknown): RestoreRequest {
  return checkRequest<RestoreRequest>('restore-request', restoreRequestSchema, doc);
}

export const bootTestRequestSchema = {
  $id: 'vm-backup-boot-test-request@1',
  type: 'object',
  additionalProperties: false,
  required: ['vm'],
  properties: {
    host: safeName,
    vm: safeName,
    backupId,
    /** seconds for the whole test (default 300) */
    timeout: { type: 'number', minimum: 10, maximum: 21600 },
    waitFor: { enum: ['agent', 'console'] },
    marker: { type: 'string', minLength: 1, maxLength: 1024 },
    /** a program in the guest, run by the guest agent once it answers */
    command: { type: 'string', pattern: '^/', maxLength: 4096 },
    args: { type: 'array', maxItems: 64, items: { type: 'string', maxLength: 4096 } },
    expect: { type: 'string', maxLength: 1024 },
    accel: { enum: ['tcg', 'kvm', 'auto'] },
    verify: { type: 'boolean' },
  },
} as const;

export type BootTestRequest = FromSchema<typeof bootTestRequestSchema>;

export function checkBootTestRequest(doc: unknown): BootTestRequest {
  return checkRequest<BootTestRequest>('boot-test-request', bootTestRequestSchema, doc);
}

export const fileRestoreRequestSchema = {
  $id: 'vm-backup-file-restore-request@1',
  type: 'object',
  additionalProperties: false,
  required: ['vm', 'paths'],
  properties: {
    host: safeName,
    vm: safeName,
    backupId,
    disk: { type: 'string', minLength: 1, maxLength: 128 },
    filesystem: { type: 'string', pattern: '^/dev/[A-Za-z0-9/_.-]{1,200}$' },
    /** absolute paths in the guest (list: the first is the directory listed) */
    paths: { type: 'array', minItems: 1, maxItems: 256, items: { type: 'string', minLength: 1, maxLength: 4096 } },
    action: { enum: ['list', 'extract'] },
    /** extract: a new directory, or a new .tar file, under a restore root */
    output: { enum: ['directory', 'tar'] },
    target: filePath,
    verify: { type: 'boolean' },
    accel: { enum: ['tcg', 'kvm'] },
  },
} as const;

export type FileRestoreRequest = FromSchema<typeof fileRestoreRequestSchema>;

export function checkFileRestoreRequest(doc: unknown): FileRestoreRequest {
  return checkRequest<FileRestoreRequest>('file-restore-request', fileRestoreRequestSchema, doc);
}
