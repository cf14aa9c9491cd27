// Verify: the check of published backups (files, images, chains), the consistency proof from the
// images, the verify records beside the manifests and the verify job that writes them.
export {
  verifyBackup,
  verifyRepository,
  verifyPath,
  formatReport,
  findBackups,
  runVerifier,
  type BackupReport,
  type RepositoryReport,
  type VerifyOptions,
  type VerifyProblem,
  type VerifiedFile,
} from './verify';
export {
  runVerifyJob,
  summarizeVerifyJob,
  type VerifyJobOptions,
  type VerifyJobResult,
  type VerifiedBackup,
  type VerifySummary,
  type VerifySelect,
  type ProofScope,
} from './job';
export { currentRecord, writeRecord, manifestSha, type VerifyRecord } from './record';
export { proveDisk, type DiskProof, type FsProof, type ProofOptions } from './filesystem';
