import * as assert from 'node:assert/strict';
import { checkRoot, inside } from '../../../src/repository/paths';
import { ArtifactRepository } from '../../../src/repository/repository';
import { isSafeName, newBackupId } from '../../../src/util/ids';

describe('paths never leave the repository root', () => {
  it('joins plain names only', () => {
    assert.equal(inside('/repo', 'vm', 'host', 'vm1', '20260101T000000Z-abcdef'), '/repo/host/vm1/20260101T000000Z-abcdef');
    for (const bad of ['..', '../x', 'a/b', '.hidden', '', 'a\0b', 'x'.repeat(65), '..a', 'a..b']) {
      assert.throws(() => inside('/repo', 'vm', 'host', bad), /^PathRefused: vm: /, JSON.stringify(bad));
    }
  });
  it('requires absolute configured roots', () => {
    assert.equal(checkRoot('/a/b/../c', 'repository'), '/a/c');
    assert.throws(() => checkRoot('rel', 'repository'), /repository: "rel" must be an absolute path/);
    assert.throws(() => checkRoot('', 'socketDir'), /socketDir: is required/);
  });
  it('stages beside the final directory', () => {
    const repo = new ArtifactRepository('/repo');
    assert.equal(repo.stagingDir('h', 'v', '20260101T000000Z-abcdef'), '/repo/h/v/.partial-20260101T000000Z-abcdef');
    assert.throws(() => repo.stagingDir('h', 'v', '../../etc'), /backupId/);
  });
  it('makes backup ids that sort by time and are safe names', () => {
    const id = newBackupId(new Date('2026-11-22T10:15:00.123Z'));
    assert.match(id, /^20261122T101500Z-[a-z0-9]{6}$/);
    assert.ok(isSafeName(id));
  });
});
