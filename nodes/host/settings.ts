// The host node's settings, checked and turned into domain options; every error names its field.
import type { NodeDef } from 'node-red';
import type { Timeouts } from '../../src/pipeline/live-backup';
import { DEFAULT_TIMEOUTS } from '../../src/pipeline/backup-host';
import type { ProviderConfig } from '../../src/providers';
import { checkRoot } from '../../src/repository/paths';
import { isSafeName } from '../../src/util/ids';

export interface HostNodeDef extends NodeDef {
  provider: 'qemu' | 'hyperv' | 'libvirt';
  hostName: string;
  libvirtUri: string;
  socketDir: string;
  overlayDir: string;
  repository: string;
  journalDir: string;
  freezeTimeout: string | number; // seconds
  pauseTimeout: string | number; // seconds
  sessionTimeout: string | number; // minutes
  idleTimeout: string | number; // seconds
  hvMode: 'local' | 'ssh';
  sshHost: string;
  sshPort: string | number;
  sshUser: string;
}

export interface HostCredentials {
  password?: string;
  privateKey?: string;
}

export interface HostSettings {
  provider: ProviderConfig;
  repository: string;
  journalDir?: string;
  timeouts: Timeouts;
}

function number(field: string, value: unknown, fallback: number, min: number, max: number): number {
  if (value === undefined || value === '') return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n < min || n > max) throw new Error(`${field}: ${JSON.stringify(value)} must be a number from ${min} to ${max}`);
  return n;
}

export function hostSettings(c: Partial<HostNodeDef>, creds: HostCredentials): HostSettings {
  const hostName = c.hostName || 'localhost';
  if (!isSafeName(hostName)) throw new Error(`hostName: "${hostName}" must be letters, digits, . _ - (it names a repository folder)`);
  const provider = c.provider ?? 'qemu';
  if (provider !== 'qemu' && provider !== 'hyperv' && provider !== 'libvirt') throw new Error(`provider: "${String(provider)}" is not one of qemu, hyperv, libvirt`);
  const timeouts: Timeouts = {
    freezeMs: number('freezeTimeout', c.freezeTimeout, DEFAULT_TIMEOUTS.freezeMs / 1000, 1, 600) * 1000,
    pauseMs: number('pauseTimeout', c.pauseTimeout, DEFAULT_TIMEOUTS.pauseMs / 1000, 5, 86400) * 1000,
    sessionMs: number('sessionTimeout', c.sessionTimeout, DEFAULT_TIMEOUTS.sessionMs / 60000, 1, 7 * 1440) * 60000,
    idleMs: number('idleTimeout', c.idleTimeout, DEFAULT_TIMEOUTS.idleMs / 1000, 5, 86400) * 1000,
    commandMs: DEFAULT_TIMEOUTS.commandMs,
  };
  const settings: HostSettings = {
    repository: checkRoot(c.repository, 'repository'),
    timeouts,
    provider: { provider, hostName },
  };
  if (c.journalDir) settings.journalDir = checkRoot(c.journalDir, 'journalDir');
  if (provider === 'qemu') {
    settings.provider.qemu = { socketDir: checkRoot(c.socketDir, 'socketDir') };
    if (c.overlayDir) settings.provider.qemu.overlayDir = checkRoot(c.overlayDir, 'overlayDir');
  } else if (provider === 'libvirt') {
    const uri = c.libvirtUri || 'qemu:///system';
    if (!/^[a-z][a-z0-9+]*:\/\/\S*$/.test(uri) || uri.length > 512) throw new Error(`libvirtUri: "${uri}" is not a libvirt URI (e.g. qemu:///system)`);
    settings.provider.libvirt = { uri };
  } else {
    const mode = c.hvMode ?? 'local';
    if (mode !== 'local' && mode !== 'ssh') throw new Error(`hvMode: "${String(mode)}" is not one of local, ssh`);
    settings.provider.hyperv = { mode };
    if (mode === 'ssh') {
      if (!c.sshHost) throw new Error('sshHost: is required when hvMode is ssh');
      if (!c.sshUser) throw new Error('sshUser: is required when hvMode is ssh');
      settings.provider.hyperv.ssh = {
        host: c.sshHost,
        port: number('sshPort', c.sshPort, 22, 1, 65535),
        username: c.sshUser,
        ...(creds.password ? { password: creds.password } : {}),
        ...(creds.privateKey ? { privateKey: creds.privateKey } : {}),
      };
    }
  }
  return settings;
}
