// The host node's settings are checked in src/host/settings.ts (one table of rules, also
// emitted into the editor at build time); this file only types what Node-RED stores.
import type { NodeDef } from 'node-red';
import type { HostConfig, HostCredentials } from '../../src/host/settings';

export type HostNodeDef = NodeDef & HostConfig;
export type { HostCredentials };
export { hostSettings } from '../../src/host/settings';
