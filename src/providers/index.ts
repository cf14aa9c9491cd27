import { checkRoot, PathRefused } from '../repository/paths';
import type { GuardianProviderSpec, HostProvider } from './provider';
import { QemuProvider } from './qemu/qemu-provider';
import type { PowerShellRunner } from './hyperv/runner';
import type { SshTarget } from './ssh-target';

// The settings are checked once, in src/host/settings.ts (the host node's fields and the editor);
// here each provider only turns its part into its own options.
export interface ProviderConfig {
  provider: 'qemu' | 'hyperv' | 'libvirt';
  hostName: string;
  qemu?: { socketDir: string; fleeceDir?: string; compress?: boolean; commandMs?: number; inventory?: 'json' | 'proxmox' | 'none' };
  /** runner: replaces the PowerShell transport built from mode (unit tests; never from settings) */
  hyperv?: { mode: 'local' | 'ssh'; ssh?: SshTarget; runner?: PowerShellRunner };
  libvirt?: { uri?: string; runDir?: string; scratchDir?: string };
}

/** The provider registry: a new provider is one line here (and its settings in src/host/settings.ts). */
const FACTORIES: Record<ProviderConfig['provider'], (config: ProviderConfig) => HostProvider> = {
  qemu: (config) => {
    const q = config.qemu;
    if (!q) throw new PathRefused('socketDir', 'is required for the QEMU provider');
    return new QemuProvider({
      socketDir: checkRoot(q.socketDir, 'socketDir'),
      ...(q.fleeceDir ? { fleeceDir: checkRoot(q.fleeceDir, 'fleeceDir') } : {}),
      ...(q.compress !== undefined ? { compress: q.compress } : {}),
      ...(q.commandMs !== undefined ? { commandMs: q.commandMs } : {}),
      ...(q.inventory ? { inventory: q.inventory } : {}),
    });
  },
  // loaded on demand, like Hyper-V
  libvirt: (config) => {
    const { LibvirtProvider } = require('./libvirt/libvirt-provider') as typeof import('./libvirt/libvirt-provider');
    const { checkUri } = require('./libvirt/virsh') as typeof import('./libvirt/virsh');
    const l = config.libvirt ?? {};
    return new LibvirtProvider({
      uri: checkUri(l.uri ?? 'qemu:///system'),
      ...(l.runDir ? { runDir: checkRoot(l.runDir, 'runDir') } : {}),
      ...(l.scratchDir ? { scratchDir: checkRoot(l.scratchDir, 'scratchDir') } : {}),
    });
  },
  // loaded on demand: QEMU users never load the Hyper-V code
  hyperv: (config) => {
    const { createHyperVProvider } = require('./hyperv') as { createHyperVProvider: (o: object) => HostProvider };
    const h = config.hyperv ?? { mode: 'local' as const };
    return createHyperVProvider({
      hostName: config.hostName,
      mode: h.mode,
      ...(h.ssh ? { ssh: h.ssh } : {}),
      ...(h.runner ? { runner: h.runner } : {}),
    });
  },
};

export function createProvider(config: ProviderConfig): HostProvider {
  const factory = Object.prototype.hasOwnProperty.call(FACTORIES, config.provider) ? FACTORIES[config.provider] : undefined;
  if (!factory) throw new Error(`provider: "${String(config.provider)}" is not one of ${Object.keys(FACTORIES).join(', ')}`);
  return factory(config);
}

/**
 * A provider rebuilt from what it said of itself (guardianSpec), in a process of ours outside
 * Node-RED (the guardian): the options were checked when the provider was first made.
 */
export function providerFromSpec(spec: GuardianProviderSpec): HostProvider {
  if (spec.kind === 'qemu') return new QemuProvider(spec.options as never);
  if (spec.kind === 'libvirt') {
    const { LibvirtProvider } = require('./libvirt/libvirt-provider') as { LibvirtProvider: new (o: never) => HostProvider };
    return new LibvirtProvider(spec.options as never);
  }
  throw new Error(`provider ${spec.kind} cannot be rebuilt outside Node-RED`);
}

/** QEMU's own protocols (QMP, guest agent), for VMs we start ourselves (restore, boot test). */
export { QmpClient, GuestAgentClient } from './qemu/protocol';
