// Recovery at start: the host node's replay of its journal (recovery.ts). It acts through the
// ledger (src/ledger: the pending rule, one undo per kind) and sits below the pipeline.
export * from './recovery';
