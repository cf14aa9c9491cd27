// The VM inventory of a plain QEMU host: one small JSON file per VM, `<socketDir>/<id>.vm.json`,
// naming what the QEMU command line would (its name and disks), so that a VM whose QEMU is not
// running is still a VM of the host and is backed up offline. Beside the sockets, not in a folder
// of its own: the id is the file name, exactly as for `<id>.qmp`, and one directory is configured.
//
//   { "name": "web", "disks": [ { "id": "virtio0", "file": "/var/lib/vms/web.qcow2", "format": "qcow2" } ] }
// A disk with "backup": false is left out by the host's configuration (as Proxmox's backup=0).

/** an absolute path without `..` or `.` segments, NUL or a trailing slash: the image as the admin named it */
const absolutePath = { type: 'string', minLength: 2, maxLength: 4096, pattern: '^(/(?!\\.\\.?(/|$))[^/\\u0000]+)+$' } as const;

export const inventorySchema = {
  $id: 'vm-backup-qemu-inventory@1',
  type: 'object',
  additionalProperties: false,
  required: ['disks'],
  properties: {
    /** what the user knows the VM by (default: its id) */
    name: { type: 'string', minLength: 1, maxLength: 256 },
    disks: {
      type: 'array',
      minItems: 1,
      maxItems: 64,
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['id', 'file', 'format'],
        properties: {
          /** as QEMU names the device (virtio0, scsi0, ...): the backup's disk id */
          id: { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$' },
          file: absolutePath,
          format: { enum: ['qcow2', 'raw'] },
          /** false: the host leaves this disk out of backups (as Proxmox's backup=0) */
          backup: { type: 'boolean' },
        },
      },
    },
  },
} as const;

export interface InventoryDisk {
  id: string;
  file: string;
  format: 'qcow2' | 'raw';
  backup?: boolean;
}

export interface InventoryEntry {
  name?: string;
  disks: InventoryDisk[];
}
