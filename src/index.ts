// The package's public API, for users' own function nodes and for other programs.
export { schemas, manifestSchema, STAGES, type StageName } from './contract/schemas';
export { validate, assertStage, assertManifest, ContractError } from './contract/validate';
export type * from './contract/types';
export { classifyAll, classifyVm } from './classify/classify';
export { ONLINE_RULES, FREEZABLE_FILESYSTEMS } from './classify/rules';
export { BackupHost, DEFAULT_TIMEOUTS, type HostOptions } from './pipeline/backup-host';
export { Journal } from './journal/journal';
export { pendingUndos, type PendingUndo } from './ledger/pending';
export { recover } from './recovery';
export { summarize, type BackupSummary } from './summary';
export { createProvider, type ProviderConfig } from './providers';
export type { HostProvider } from './providers/provider';
export {
  verifyBackup,
  verifyRepository,
  verifyPath,
  formatReport,
  type BackupReport,
  type RepositoryReport,
  type VerifyOptions,
} from './verify';
export {
  parseChainPolicy,
  decideChain,
  findParent,
  ChainPolicyError,
  type ChainPolicy,
  type ChainDecision,
  type BitmapReport,
  type ParentResult,
} from './chain';
export { flattenDisk, FlattenRefused, type FlattenInput, type FlattenResult } from './chain/flatten';
export {
  restore,
  restoreFiles,
  bootTest,
  recoverRestores,
  summarizeRestore,
  RestoreRefused,
  type RestoreContext,
  type RestoreResult,
  type FileRestoreResult,
  type BootTestResult,
} from './restore';
