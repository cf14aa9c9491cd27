// powershell.exe's own errors arrive in the host's OEM code page: decoded as such (the code page
// comes from enumerate.ps1), UTF-8 when the bytes are UTF-8, Latin-1 when nothing else fits.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHyperVProvider, LocalPowerShellRunner, HyperVError } from '../../../src/providers/hyperv';
import { decodeOem, decodeStderr } from '../../../src/providers/hyperv/oem';
import { FakeSpawn } from './helpers';

const iconv = (() => {
  try {
    execFileSync('iconv', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

describe('hyperv: stderr in the OEM code page', () => {
  for (const cp of [437, 850]) {
    it(`code page ${cp}: all 128 upper characters as iconv decodes them`, function () {
      if (!iconv) this.skip();
      const bytes = Buffer.from(Array.from({ length: 128 }, (_, i) => 128 + i));
      const want = execFileSync('iconv', ['-f', `CP${cp}`, '-t', 'UTF-8'], { input: bytes }).toString('utf8');
      assert.equal(decodeOem(bytes, cp), want);
    });
  }

  it('UTF-8 stays UTF-8; other bytes go by the code page (866, 932 through TextDecoder); unknown: Latin-1', () => {
    assert.equal(decodeStderr(Buffer.from('Zugriff verweigert: Für', 'utf8'), 850), 'Zugriff verweigert: Für');
    assert.equal(decodeStderr(Buffer.from([0x46, 0x81, 0x72]), 850), 'Für');
    assert.equal(decodeStderr(Buffer.from([0x8f, 0xe0, 0xa8, 0xa2, 0xa5, 0xe2]), 866), 'Привет');
    assert.equal(decodeStderr(Buffer.from([0x83, 0x65, 0x83, 0x58, 0x83, 0x67]), 932), 'テスト');
    assert.equal(decodeStderr(Buffer.from([0x46, 0x81, 0x72])), 'F\u0081r');
    assert.equal(decodeStderr(Buffer.from([0x46, 0x81, 0x72]), 12345), 'F\u0081r');
  });

  it("enumerate tells the runner the host's OEM code page", async () => {
    const fake = FakeSpawn.byScript({ 'enumerate.ps1': 'enumerate-host.json' });
    const runner = new LocalPowerShellRunner({ scriptsDir: '/opt/s', spawn: fake.spawn });
    const provider = createHyperVProvider({ hostName: 'HV01', mode: 'local', runner });
    await provider.enumerate();
    assert.equal(runner.oemCodePage, 850);
  });

  it('a German execution-policy refusal on stderr (CP850) reads as German in the error', async () => {
    // "Die Ausführung von Skripts ist auf diesem System deaktiviert." in code page 850
    const text = 'Die Ausf\u00fchrung von Skripts ist auf diesem System deaktiviert.';
    const bytes = Buffer.from(Array.from(text, (c) => (c === '\u00fc' ? 0x81 : c.charCodeAt(0))));
    const fake = new FakeSpawn(() => ({ stderr: bytes, exitCode: 1 }));
    const runner = new LocalPowerShellRunner({ scriptsDir: '/opt/s', spawn: fake.spawn });
    runner.oemCodePage = 850;
    await assert.rejects(runner.run('get-state.ps1', {}), (e: HyperVError) => e.code === 'spawn' && e.message.includes(text));
  });
});
