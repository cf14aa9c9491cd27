// The host node's settings: one table of rules, one checking function, used by the runtime
// (hostSettings) and, emitted into the editor at build time (scripts/copy-assets.js), by the
// host node's edit dialog. So what the editor accepts is exactly what the runtime accepts.
//
// Adding a provider's settings: one entry in PROVIDERS (its label and fields) plus one case in
// providerSettings below; the editor shows and checks the new fields from the table.
import type { Timeouts } from '../pipeline/live-backup';
import type { ProviderConfig } from '../providers';
import type { SshTarget } from '../providers/ssh-target';
import { splitPatterns } from '../classify/exclude';
import { checkRoot } from '../repository/paths';

export type FieldRule =
  | { kind: 'enum'; values: readonly string[]; default: string }
  | { kind: 'name'; default: string }
  | { kind: 'dir'; required: boolean }
  | { kind: 'number'; min: number; max: number; default: number }
  | { kind: 'text'; required: boolean; maxLength: number }
  | { kind: 'fingerprint' }
  | { kind: 'patterns'; maxLength: number };

/** A field applies only when another field has one of the given values (else it is ignored). */
export interface FieldSpec {
  rule: FieldRule;
  when?: Record<string, readonly string[]>;
}

/** Per provider, the fields it reads (each applies only when that provider is chosen). */
export const PROVIDERS = {
  qemu: {
    socketDir: { rule: { kind: 'dir', required: true } },
    // where fleecing images go (src/providers/qemu/fleece.ts); overlayDir is its name in flows made before it
    fleeceDir: { rule: { kind: 'dir', required: false } },
    overlayDir: { rule: { kind: 'dir', required: false } },
    // where VMs whose QEMU is not running are defined: json reads <socketDir>/<id>.vm.json when
    // present (nothing changes on a host without such files, so it is the default); proxmox reads
    // /etc/pve/qemu-server/<id>.conf; none: only running VMs (sockets) are seen
    inventory: { rule: { kind: 'enum', values: ['json', 'proxmox', 'none'], default: 'json' } },
  },
  libvirt: {
    // checked as a URI by the libvirt provider (virsh -c); a remote one (qemu+ssh://) is refused at enumerate
    libvirtUri: { rule: { kind: 'text', required: false, maxLength: 1024 } },
    // where libvirt writes a running domain's scratch files (src/providers/libvirt/scratch.ts)
    scratchDir: { rule: { kind: 'dir', required: false } },
  },
  hyperv: {
    hvMode: { rule: { kind: 'enum', values: ['local', 'ssh'], default: 'local' } },
    sshHost: { rule: { kind: 'text', required: true, maxLength: 255 }, when: { hvMode: ['ssh'] } },
    sshPort: { rule: { kind: 'number', min: 1, max: 65535, default: 22 }, when: { hvMode: ['ssh'] } },
    sshUser: { rule: { kind: 'text', required: true, maxLength: 256 }, when: { hvMode: ['ssh'] } },
    sshHostKey: { rule: { kind: 'fingerprint' }, when: { hvMode: ['ssh'] } },
  },
} as const satisfies Record<string, Record<string, FieldSpec>>;

export type ProviderKind = keyof typeof PROVIDERS;
export const PROVIDER_KINDS = Object.keys(PROVIDERS) as ProviderKind[];

/** Fields every host has, whatever its provider. */
export const COMMON_FIELDS = {
  provider: { rule: { kind: 'enum', values: PROVIDER_KINDS, default: 'qemu' } },
  hostName: { rule: { kind: 'name', default: 'localhost' } },
  repository: { rule: { kind: 'dir', required: true } },
  journalDir: { rule: { kind: 'dir', required: false } },
  freezeTimeout: { rule: { kind: 'number', min: 1, max: 600, default: 10 } }, // seconds
  pauseTimeout: { rule: { kind: 'number', min: 5, max: 86400, default: 120 } }, // seconds
  sessionTimeout: { rule: { kind: 'number', min: 1, max: 10080, default: 360 } }, // minutes
  idleTimeout: { rule: { kind: 'number', min: 5, max: 86400, default: 300 } }, // seconds
  // disks the user leaves out: VM/DISK id patterns (src/classify/exclude.ts), e.g. "100/scsi1, web-*/vdb"
  exclude: { rule: { kind: 'patterns', maxLength: 4096 } },
} as const satisfies Record<string, FieldSpec>;

/** Everything the editor needs to check a field (emitted into host.html as JSON). */
export const HOST_RULES = { common: COMMON_FIELDS, providers: PROVIDERS };

export type HostRules = typeof HOST_RULES;

/**
 * The error text for one field of a host configuration, or undefined when it is acceptable.
 * Self-contained on purpose (no imports, no closures): its source is emitted into the editor.
 * `editor`: the dialog also accepts an environment variable reference (${NAME}), which
 * Node-RED replaces before the runtime sees the value.
 */
export function hostFieldError(
  rules: HostRules,
  field: string,
  value: unknown,
  config: Record<string, unknown>,
  editor?: boolean,
): string | undefined {
  const provider = config.provider === undefined || config.provider === '' ? 'qemu' : String(config.provider);
  const common = (rules.common as Record<string, FieldSpec | undefined>)[field];
  const own = ((rules.providers as Record<string, Record<string, FieldSpec> | undefined>)[provider] ?? {})[field];
  const spec = common ?? own;
  if (!spec) return undefined; // a field of another provider: ignored
  if (spec.when) {
    for (const [other, values] of Object.entries(spec.when)) {
      const otherSpec = ((rules.providers as Record<string, Record<string, FieldSpec>>)[provider] ?? {})[other];
      const fallback = otherSpec && 'default' in otherSpec.rule ? String(otherSpec.rule.default) : '';
      const actual = config[other] === undefined || config[other] === '' ? fallback : String(config[other]);
      if (!values.includes(actual)) return undefined;
    }
  }
  const blank = value === undefined || value === null || value === '';
  const text = blank ? '' : String(value);
  const envRef = editor === true && /^\$\{?[A-Za-z_][A-Za-z0-9_]*\}?$/.test(text);
  const rule = spec.rule;
  switch (rule.kind) {
    case 'enum':
      return blank || rule.values.includes(text) ? undefined : `${field}: "${text.slice(0, 64)}" is not one of ${rule.values.join(', ')}`;
    case 'name':
      return blank || /^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(text) || envRef
        ? undefined
        : `${field}: "${text.slice(0, 64)}" must be letters, digits, . _ - (at most 64; it names a repository folder)`;
    case 'dir':
      if (blank) return rule.required ? `${field}: is required` : undefined;
      if (envRef) return undefined;
      if (text.charAt(0) !== '/') return `${field}: "${text.slice(0, 256)}" must be an absolute path`;
      return text.indexOf('\0') === -1 ? undefined : `${field}: contains a NUL byte`;
    case 'number': {
      if (blank || envRef) return undefined; // the runtime uses its default
      const n = Number(text);
      return /^\s*-?[0-9]+(\.[0-9]+)?\s*$/.test(text) && n >= rule.min && n <= rule.max
        ? undefined
        : `${field}: ${JSON.stringify(text.slice(0, 32))} must be a number from ${rule.min} to ${rule.max}`;
    }
    case 'text':
      if (blank || text.trim() === '') return rule.required ? `${field}: is required` : undefined;
      return text.length <= rule.maxLength ? undefined : `${field}: is longer than ${rule.maxLength} characters`;
    case 'patterns': {
      // VM/DISK, each a glob of letters, digits . _ : - and * ? ; separated by commas, spaces or new lines
      if (blank) return undefined;
      if (text.length > rule.maxLength) return `${field}: is longer than ${rule.maxLength} characters`;
      const list = text.split(/[\s,]+/).filter((p) => p !== '');
      for (let i = 0; i < list.length; i++) {
        if (!/^[A-Za-z0-9._:*?-]{1,64}\/[A-Za-z0-9._:*?-]{1,128}$/.test(list[i]))
          return `${field}: pattern ${i + 1} "${list[i].slice(0, 80)}" must be VM/DISK (letters, digits, . _ : - and the wildcards * ?), e.g. 100/scsi1 or web-*/vdb`;
      }
      return undefined;
    }
    case 'fingerprint':
      // as `ssh-keygen -lf <key>` prints it: SHA256: and 43 base64 characters (padding optional)
      return blank || /^SHA256:[A-Za-z0-9+/]{43}=?$/.test(text.trim())
        ? undefined
        : `${field}: "${text.slice(0, 80)}" must be a SHA256 fingerprint as ssh-keygen -lf prints it (SHA256: and 43 characters)`;
  }
  return undefined;
}

/** The host node's configuration as Node-RED stores it (editor values are strings). */
export type HostConfig = Partial<Record<keyof typeof COMMON_FIELDS | 'name', string | number>> & Record<string, unknown>;

export interface HostCredentials {
  password?: string;
  privateKey?: string;
}

export interface HostSettings {
  provider: ProviderConfig;
  repository: string;
  /** disks the user leaves out (VM/DISK globs), checked */
  exclude: string[];
  journalDir?: string;
  timeouts: Timeouts;
}

const COMMAND_MS = 30_000;

/** Check every field (the first error, naming its field, is thrown) and build the domain options. */
export function hostSettings(c: HostConfig, creds: HostCredentials = {}): HostSettings {
  const provider = (c.provider === undefined || c.provider === '' ? 'qemu' : String(c.provider)) as ProviderKind;
  const fields = [...Object.keys(COMMON_FIELDS), ...Object.keys(PROVIDERS[provider] ?? {})];
  for (const field of fields) {
    const error = hostFieldError(HOST_RULES, field, c[field], c);
    if (error) throw new Error(error);
  }
  const num = (field: keyof typeof COMMON_FIELDS) => {
    const v = c[field];
    const rule = COMMON_FIELDS[field].rule as { default: number };
    return v === undefined || v === '' ? rule.default : Number(v);
  };
  const hostName = c.hostName ? String(c.hostName) : 'localhost';
  const settings: HostSettings = {
    repository: checkRoot(c.repository, 'repository'),
    exclude: c.exclude ? splitPatterns(String(c.exclude)) : [],
    timeouts: {
      freezeMs: num('freezeTimeout') * 1000,
      pauseMs: num('pauseTimeout') * 1000,
      sessionMs: num('sessionTimeout') * 60_000,
      idleMs: num('idleTimeout') * 1000,
      commandMs: COMMAND_MS,
    },
    provider: { provider, hostName, ...providerSettings(provider, c, creds) },
  };
  if (c.journalDir) settings.journalDir = checkRoot(c.journalDir, 'journalDir');
  return settings;
}

/** The provider's part of ProviderConfig, from fields hostFieldError has already checked. */
function providerSettings(provider: ProviderKind, c: HostConfig, creds: HostCredentials): Partial<ProviderConfig> {
  switch (provider) {
    case 'qemu':
      return {
        qemu: {
          socketDir: checkRoot(c.socketDir, 'socketDir'),
          ...(c.fleeceDir
            ? { fleeceDir: checkRoot(c.fleeceDir, 'fleeceDir') }
            : c.overlayDir
              ? { fleeceDir: checkRoot(c.overlayDir, 'overlayDir') }
              : {}),
          inventory: c.inventory === 'proxmox' || c.inventory === 'none' ? c.inventory : 'json',
        },
      };
    case 'libvirt':
      return {
        libvirt: {
          uri: c.libvirtUri ? String(c.libvirtUri).trim() : 'qemu:///system',
          ...(c.scratchDir ? { scratchDir: checkRoot(c.scratchDir, 'scratchDir') } : {}),
        },
      };
    case 'hyperv': {
      const mode = c.hvMode === 'ssh' ? 'ssh' : 'local';
      if (mode === 'local') return { hyperv: { mode } };
      if (!creds.password && !creds.privateKey) throw new Error('password: a password or a private key is required when hvMode is ssh');
      const ssh: SshTarget = {
        host: String(c.sshHost).trim(),
        port: c.sshPort === undefined || c.sshPort === '' ? 22 : Number(c.sshPort),
        username: String(c.sshUser).trim(),
        ...(creds.password ? { password: creds.password } : {}),
        ...(creds.privateKey ? { privateKey: creds.privateKey } : {}),
        ...(c.sshHostKey ? { hostFingerprint: String(c.sshHostKey).trim() } : {}),
      };
      return { hyperv: { mode, ssh } };
    }
  }
}
