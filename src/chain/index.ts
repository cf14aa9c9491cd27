// Incremental chains on the repository side: the policy and the full-or-incremental decision, the
// search for a disk's parent backup, and the link checks that verify and restore share.
export {
  parseChainPolicy,
  decideChain,
  diskChainEntry,
  backingString,
  vmChain,
  ChainPolicyError,
  DEFAULT_CHAIN_POLICY,
  type ChainPolicy,
  type FullEvery,
  type BitmapReport,
  type ChainDecision,
  type ParentResult,
  type ParentFound,
  type ParentRefused,
  type FullReason,
  type DiskChain,
} from './policy';
export { findParent, planDiskChain, type FindParentInput } from './parent';
export { walkChain, checkOwnLink, parentLink, checkBackingChain, type ChainLink, type LinkProblem, type ImageToolOptions } from './links';
