// From the guest agent's answers to the backup set's agent and guest fields.
import { isDynamicDevice } from '../../classify/rules';
import type { EnumeratedVm } from '../../contract/types';

export interface GuestInfo {
  version: string;
  supported_commands: { name: string; enabled: boolean }[];
}

export interface GuestOsInfo {
  id?: string;
  name?: string;
  'pretty-name'?: string;
  version?: string;
  'version-id'?: string;
  'kernel-release'?: string;
  'kernel-version'?: string;
}

export interface GuestFsInfo {
  name: string;
  mountpoint: string;
  type: string;
  disk: { dev?: string; serial?: string; 'bus-type'?: string; target?: number }[];
}

export function agentFrom(info: GuestInfo): EnumeratedVm['agent'] {
  const freeze = info.supported_commands.find((c) => c.name === 'guest-fsfreeze-freeze');
  return { present: true, responding: true, freezeEnabled: freeze?.enabled === true, version: info.version.slice(0, 64) };
}

export function osFrom(os: GuestOsInfo | undefined): NonNullable<EnumeratedVm['guest']['os']> | undefined {
  if (!os) return undefined;
  const out: NonNullable<EnumeratedVm['guest']['os']> = {};
  const id = os.id;
  const name = os['pretty-name'] ?? os.name;
  const version = os.version ?? os['version-id'];
  const kernel = os['kernel-release'];
  if (id) out.id = id.slice(0, 64);
  if (name) out.name = name.slice(0, 256);
  if (version) out.version = version.slice(0, 256);
  if (kernel) out.kernel = kernel.slice(0, 256);
  return out;
}

export function filesystemsFrom(fsinfo: readonly GuestFsInfo[]): EnumeratedVm['guest']['filesystems'] {
  return fsinfo.map((fs) => ({
    mountpoint: fs.mountpoint.slice(0, 4096),
    type: fs.type.slice(0, 64),
    device: fs.name.slice(0, 256),
    disks: (fs.disk ?? []).map((d) => (d.dev ?? d.serial ?? `${d['bus-type'] ?? 'disk'}${d.target ?? ''}`).slice(0, 256)),
    dynamic: isDynamicDevice(fs.name),
  }));
}
