// Retention of the repository's backups: the rules (Proxmox's), the chain-aware plan, the crash-safe prune.
export {
  parseRetention,
  selectRetention,
  describeRetention,
  keepsSomething,
  isoWeek,
  RetentionError,
  RULES,
  RULE_LABEL,
} from './retention';
export type { Retention, RuleName, RetentionItem, Mark } from './retention';
export { planPrune, manifestsAfter, PrunePlanError, type PrunePlan, type Merge, type PlannedBackup } from './plan';
export { pruneVm, pruneHost, recoverVm, listVms, type PruneOptions, type VmPruneReport } from './prune';
export { PruneBusy, PRUNE_JOURNAL } from './journal';
export { scanVm, type ScannedBackup, type VmScan } from './scan';
export { formatPruneReport, summarizePrune, type PruneSummary } from './report';
