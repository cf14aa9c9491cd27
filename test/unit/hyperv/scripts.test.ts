// PowerShell does not run on these machines, so the shipped .ps1 files are checked statically:
// the calling convention, module-qualified cmdlets, no dynamic code, balanced brackets.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { encodeArgs, HOST_SCRIPTS, SCRIPT_FILES, type ScriptParams } from '../../../src/providers/hyperv/runner';
import { SCRIPTS } from './helpers';

const read = (name: string) => readFileSync(path.join(SCRIPTS, name), 'utf8');

/** Code only: comments and the contents of strings removed (here-strings are not used). */
function codeOf(text: string): string {
  let out = '';
  let i = 0;
  while (i < text.length) {
    const c = text[i]!;
    if (c === '<' && text[i + 1] === '#') {
      const end = text.indexOf('#>', i + 2);
      i = end < 0 ? text.length : end + 2;
    } else if (c === '#') {
      while (i < text.length && text[i] !== '\n') i++;
    } else if (c === "'") {
      i++;
      while (i < text.length && !(text[i] === "'" && text[i + 1] !== "'")) i += text[i] === "'" ? 2 : 1;
      i++;
      out += "''";
    } else if (c === '"') {
      i++;
      while (i < text.length && text[i] !== '"') i += text[i] === '`' ? 2 : 1;
      i++;
      out += '""';
    } else if (c === '`') {
      i += 2;
    } else {
      out += c;
      i++;
    }
  }
  return out;
}

const HYPERV_CMDLETS = [
  'Get-VM',
  'Set-VM',
  'Start-VM',
  'Stop-VM',
  'Save-VM',
  'Suspend-VM',
  'Resume-VM',
  'Checkpoint-VM',
  'Get-VMSnapshot',
  'Get-VMCheckpoint',
  'Remove-VMSnapshot',
  'Remove-VMCheckpoint',
  'Get-VMHardDiskDrive',
  'Get-VHD',
  'Get-VMIntegrationService',
  'Get-VMProcessor',
  'Get-VMMemory',
  'Get-VMNetworkAdapter',
  'Get-VMNetworkAdapterVlan',
  'Get-VMDvdDrive',
  'Get-VMFirmware',
  'Get-VMBios',
];

describe('hyperv scripts (static checks)', () => {
  it('the folder holds exactly the host scripts, common.ps1 and the guest helper', () => {
    const files = readdirSync(SCRIPTS)
      .filter((f) => f.endsWith('.ps1'))
      .sort();
    assert.deepEqual(files, [...SCRIPT_FILES, 'guest-publish-volumes.ps1'].sort());
  });

  for (const name of HOST_SCRIPTS) {
    describe(name, () => {
      const text = read(name);
      const code = codeOf(text);

      it('takes one parameter, -ArgsJson, and dot-sources common.ps1 first', () => {
        const lines = text.split(/\r?\n/).filter((l) => l.trim() && !l.trim().startsWith('#'));
        assert.equal(lines[0], 'param([string]$ArgsJson)');
        assert.equal(lines[1], ". (Join-Path $PSScriptRoot 'common.ps1')");
      });

      it('answers with Write-VmbResult, and with Write-VmbError from its catch', () => {
        assert.match(text, /\} catch \{\r?\n\s+Write-VmbError \$_\r?\n\}\r?\nWrite-VmbResult \$out\s*$/);
        assert.match(text, /Read-VmbArgs \$ArgsJson/);
      });

      it('calls Hyper-V cmdlets module-qualified only (VMware PowerCLI also has Get-VM)', () => {
        for (const cmdlet of HYPERV_CMDLETS) {
          const bare = new RegExp(`(?<![\\\\\\w-])${cmdlet}(?![\\w-])`, 'g');
          assert.deepEqual(code.match(bare) ?? [], [], `${cmdlet} without Hyper-V\\ in ${name}`);
        }
      });

      it('runs no dynamic code and starts no other program', () => {
        assert.doesNotMatch(
          code,
          /Invoke-Expression|\biex\b|Add-Type|EncodedCommand|Start-Process|\bcmd(\.exe)?\b|ScriptBlock\]::Create|&\s*\$/i,
        );
      });

      it('never deletes files itself (Hyper-V merges and deletes .avhdx files)', () => {
        assert.doesNotMatch(code, /Remove-Item|\bdel\b|\brm\b|\[System\.IO\.File\]::Delete/i);
      });

      it('has balanced brackets outside strings and comments', () => {
        const pairs: Record<string, string> = { ')': '(', '}': '{', ']': '[' };
        const stack: string[] = [];
        for (const ch of code) {
          if ('({['.includes(ch)) stack.push(ch);
          else if (ch in pairs) assert.equal(stack.pop(), pairs[ch], `unbalanced ${ch} in ${name}`);
        }
        assert.deepEqual(stack, [], `unclosed in ${name}`);
      });
    });
  }

  it('common.ps1: Stop on errors, JSON with -Depth 6 -Compress through -InputObject, ASCII only, exit codes 0 and 1', () => {
    const text = read('common.ps1');
    assert.match(text, /\$ErrorActionPreference = 'Stop'/);
    assert.match(text, /ConvertTo-Json -InputObject \$Object -Depth 6 -Compress/);
    assert.match(text, /Remove-TypeData -TypeName System\.Array/);
    assert.match(text, /\[regex\]::Replace\(\$json, '\[\^\\x00-\\x7F\]', \{ param\(\$m\) '\\u\{0:x4\}' -f \[int\]\[char\]\$m\.Value \}\)/);
    assert.match(text, /function Write-VmbResult[\s\S]*?exit 0/);
    assert.match(text, /function Write-VmbError[\s\S]*?exit 1/);
  });

  it('common.ps1 accepts exactly what encodeArgs produces', () => {
    const accepted = /'\^\[A-Za-z0-9\+\/\]\+=\{0,2\}\$'/.test(read('common.ps1'));
    assert.ok(accepted, 'the Base64 check in Read-VmbArgs');
    const re = /^[A-Za-z0-9+/]+={0,2}$/;
    const samples: ScriptParams[] = [{}, { VmId: 'x' }, { A: 'B\u00fcro \u2603 \ud83d\ude00' }, { N: 570, B: true, Z: null }];
    for (const p of samples) assert.match(encodeArgs(p), re);
  });

  it('checkpoint.ps1 restores the CheckpointType in a finally block, and removes a checkpoint it cannot use', () => {
    const text = read('checkpoint.ps1');
    const fin = text.indexOf('} finally {');
    assert.ok(fin > 0);
    assert.match(text.slice(fin), /Hyper-V\\Set-VM -VM \(Hyper-V\\Get-VM -Id \$vmId\) -CheckpointType \$previousType/);
    assert.match(text.slice(0, fin), /Hyper-V\\Checkpoint-VM -VM \$vm -SnapshotName \$name -Passthru/);
    assert.match(text.slice(0, fin), /Hyper-V\\Set-VM -VM \$vm -CheckpointType \$type/);
    assert.match(
      text.slice(0, fin),
      /catch \{\s+\$failure = \$_\s+try \{ Hyper-V\\Remove-VMSnapshot -VMSnapshot \$checkpoint -Confirm:\$false \}/,
    );
    assert.match(text, /'\^vmbackup-\[0-9\]\{8\}T\[0-9\]\{6\}Z-\[a-z0-9\]\{6\}\$'/);
  });

  it('remove-checkpoint.ps1 only removes vmbackup-* checkpoints (Recovery ones only when allowed)', () => {
    const text = read('remove-checkpoint.ps1');
    assert.match(text, /\$ours = \(\[string\]\$cp\.Name\) -cmatch '\^vmbackup-'/);
    assert.match(text, /if \(-not \$ours -and -not \(\$allowRecovery -and \$recovery\)\) \{\s+throw/);
    assert.match(text, /Hyper-V\\Remove-VMSnapshot -VMSnapshot \$cp -Confirm:\$false/);
  });

  it('the guest helper writes the KVP guest pool key the host reads', () => {
    const text = read('guest-publish-volumes.ps1');
    assert.match(text, /HKLM:\\SOFTWARE\\Microsoft\\Virtual Machine\\Guest/);
    assert.match(text, /'VmBackupVolumes'/);
  });
});
