import { checkRoot, PathRefused } from '../repository/paths';
import type { HostProvider } from './provider';
import { QemuProvider } from './qemu/qemu-provider';

export interface ProviderConfig {
  provider: 'qemu' | 'hyperv' | 'libvirt';
  hostName: string;
  qemu?: { socketDir: string; overlayDir?: string; compress?: boolean; commandMs?: number };
  hyperv?: {
    mode: 'local' | 'ssh';
    ssh?: { host: string; port?: number; username: string; password?: string; privateKey?: string };
  };
  libvirt?: { uri?: string; runDir?: string };
}

export function createProvider(config: ProviderConfig): HostProvider {
  if (config.provider === 'qemu') {
    const q = config.qemu;
    if (!q) throw new PathRefused('socketDir', 'is required for the QEMU provider');
    return new QemuProvider({
      socketDir: checkRoot(q.socketDir, 'socketDir'),
      ...(q.overlayDir ? { overlayDir: checkRoot(q.overlayDir, 'overlayDir') } : {}),
      ...(q.compress !== undefined ? { compress: q.compress } : {}),
      ...(q.commandMs !== undefined ? { commandMs: q.commandMs } : {}),
    });
  }
  if (config.provider === 'hyperv') {
    // loaded on demand: QEMU users never load the Hyper-V code
    const { createHyperVProvider } = require('./hyperv') as { createHyperVProvider: (o: object) => HostProvider };
    const h = config.hyperv ?? { mode: 'local' as const };
    return createHyperVProvider({ hostName: config.hostName, mode: h.mode, ...(h.ssh ? { ssh: h.ssh } : {}) });
  }
  if (config.provider === 'libvirt') {
    // loaded on demand, like Hyper-V
    const { LibvirtProvider } = require('./libvirt/libvirt-provider') as typeof import('./libvirt/libvirt-provider');
    const { checkUri } = require('./libvirt/virsh') as typeof import('./libvirt/virsh');
    const l = config.libvirt ?? {};
    return new LibvirtProvider({
      uri: checkUri(l.uri ?? 'qemu:///system'),
      ...(l.runDir ? { runDir: checkRoot(l.runDir, 'runDir') } : {}),
    });
  }
  throw new Error(`provider: "${String(config.provider)}" is not one of qemu, hyperv, libvirt`);
}
