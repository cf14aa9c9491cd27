// Types derived from the schemas, so the two cannot drift.
import type { FromSchema } from 'json-schema-to-ts';
import type { schemas, manifestSchema } from './schemas';

export type EnumeratedSet = FromSchema<typeof schemas.enumerated>;
export type ClassifiedSet = FromSchema<typeof schemas.classified>;
export type PreparedSet = FromSchema<typeof schemas.prepared>;
export type SnapshottedSet = FromSchema<typeof schemas.snapshotted>;
export type PostSnapshotSet = FromSchema<(typeof schemas)['post-snapshot']>;
export type CopiedSet = FromSchema<typeof schemas.copied>;
export type BackupSet = EnumeratedSet | ClassifiedSet | PreparedSet | SnapshottedSet | PostSnapshotSet | CopiedSet;
export type Manifest = FromSchema<typeof manifestSchema>;

export type EnumeratedVm = EnumeratedSet['vms'][number];
export type ClassifiedVm = ClassifiedSet['vms'][number];
export type PreparedVm = PreparedSet['vms'][number];
export type SnapshottedVm = SnapshottedSet['vms'][number];
export type PostSnapshotVm = PostSnapshotSet['vms'][number];
export type CopiedVm = CopiedSet['vms'][number];
export type Disk = EnumeratedVm['disks'][number];
export type Reason = ClassifiedVm['reasons'][number];
export type ReasonRule = Reason['rule'];
export type Method = ClassifiedVm['method'];
export type Consistency = ClassifiedVm['consistency'];
export type FallbackPolicy = NonNullable<ClassifiedSet['policy']>['fallback'];
export type PrepareResult = PreparedVm['prepare'];
export type SnapshotResult = SnapshottedVm['snapshot'];
export type PointInTimeView = SnapshotResult['view'];
export type ChainPlan = NonNullable<PrepareResult['chainDraft']>[number];
export type TrackingInfo = NonNullable<Disk['tracking']>;
export type PostSnapshotResult = PostSnapshotVm['postSnapshot'];
export type CopyResult = CopiedVm['copy'];
export type ManifestFile = Manifest['files'][number];
export type UnreachablePolicy = NonNullable<NonNullable<ClassifiedSet['policy']>['unreachable']>;
export type SkippedVm = NonNullable<ClassifiedSet['skipped']>[number];
export type Timing = NonNullable<EnumeratedSet['timings']['enumerate']>;
