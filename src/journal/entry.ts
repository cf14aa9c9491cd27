// What one journal line holds: the shape journal.ts writes and check.ts checks each line against
// (its own file so that the checker and the writer both depend on it, not on each other).
import type { PointInTimeView } from '../contract/types';

export type JournalOp =
  | 'freeze' // guest file systems frozen; undone by thaw
  | 'save' // vCPUs stopped and state saved; undone by resume (data.previousState)
  | 'view' // point-in-time view made (data.view); undone by release
  | 'track' // change tracking started (data.track); undone by untrack
  | 'staging' // staging directory created (data.dir); undone by discard
  | 'thaw'
  | 'resume'
  | 'release'
  | 'untrack'
  | 'discard'
  | 'publish'
  | 'unpublish' // a published VM's backup taken back (all or none): its staging directory is pending again
  | 'step' // a stage (data.step: prepare, snapshot, post-snapshot, copy) began on the set: where an interrupted set was cut
  | 'adopt' // the set's guardian process took over its undos (data.pid): recovery leaves the set to it while it runs
  | 'end'; // the backup set is over: nothing of it is pending

export interface JournalEntry {
  t: string;
  backupId: string;
  vm?: string;
  op: JournalOp;
  phase: 'intent' | 'done' | 'failed';
  /** the host name the line was written under (paths of the set are computed from it, not from data) */
  host?: string;
  /** who wrote it: the host config node's id, which survives a rename of the host */
  owner?: string;
  /** by: "guardian" when the guardian process (Node-RED had died) wrote it */
  data?: {
    previousState?: string;
    view?: PointInTimeView;
    track?: TrackIntent;
    dir?: string;
    error?: string;
    by?: 'guardian';
    /** an undo found nothing to undo (overlays planned, never made) */ nothingToDo?: boolean;
    /** adopt: the guardian process's pid */
    pid?: number;
    /** step: the stage that began; end: the stage the set was ended in */
    step?: string;
    /** end: the set was ended by its host node closing (data.error: why) and the user has not heard of it yet */
    unreported?: boolean;
  };
}

/** Tracking started for a backup: `records` are this backup's new ones, `since` the parent's it reads by. */
export interface TrackIntent {
  records: { disk: string; name: string }[];
  since: { disk: string; name: string }[];
}
