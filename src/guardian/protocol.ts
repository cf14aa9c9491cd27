// What Node-RED and a set's guardian process say to each other, in a file of its own so that
// guardian-process.ts can know the messages without importing guardian.ts, which starts it.
import type { GuardianProviderSpec } from '../providers/provider';

export interface GuardianSpec {
  journal: string;
  backupId: string;
  parentPid: number;
  /** how the guardian builds its own provider; only QEMU for now */
  provider: GuardianProviderSpec;
  commandMs: number;
  /** stop retrying failed undos after this long (recovery at the next start goes on) */
  giveUpMs: number;
}

/** Node-RED -> guardian */
export type GuardianRequest = { id: number } & (
  | { op: 'ping' }
  | { op: 'freeze'; vm: string; capMs: number; timeoutMs: number }
  | { op: 'thaw'; vm: string }
  | { op: 'status'; vm: string }
  | { op: 'adopt' }
);

/** guardian -> Node-RED: an answer to a request, or an event of its own */
export type GuardianReply =
  | { id: number; ok: true; value: unknown }
  | { id: number; ok: false; error: string }
  | { event: 'ready' }
  | { event: 'thawed'; vm: string; frozenMs: number; capped: boolean }
  | { event: 'ended' };
