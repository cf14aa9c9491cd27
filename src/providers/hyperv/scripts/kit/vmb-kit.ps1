# vm-backup conformance kit for Hyper-V. Run it as an administrator ON A HYPER-V HOST:
#
#   powershell.exe -ExecutionPolicy Bypass -File vmb-kit.ps1 [-OutDir <folder>]
#       read-only (the default): runs every read-only operation the vm-backup provider uses, on
#       every VM, and writes what each printed as a fixture <step>.json, in the shape the
#       provider's tests load (test/unit/hyperv/fixtures). Nothing on the host changes.
#   ... -TestVm <name> -AllowChanges
#       also backs up ONE named test VM the way the provider does: a crash-consistent recovery
#       snapshot, the end-of-copy check, its conversion to a reference point, an
#       application-consistent recovery snapshot, the RCT changes since the first reference
#       point, the second conversion, and then removes both reference points again. The VM keeps
#       running; each snapshot is merged back by Hyper-V. Use an expendable VM.
#   ... -TestVm <name> -AllowChanges -AllowDowntime
#       also the saved-state method's steps: Save-VM of the test VM, its state, Start-VM again.
#   ... -DryRun
#       prints every step it would run (script and arguments) and runs nothing.
#
# Send the OutDir folder (zip it) to the vm-backup maintainers: each file becomes a test.
# The steps are the JSON table below; the same table drives the kit's dry run on the maintainers'
# side (src/providers/hyperv/kit/kit.ts), so both run the same operations in the same order.
param(
    [string]$OutDir = '',
    [string]$TestVm = '',
    [switch]$AllowChanges,
    [switch]$AllowDowntime,
    [switch]$DryRun,
    [string]$ScriptsDir = ''
)
$ErrorActionPreference = 'Stop'

$KitSteps = @'
[
  { "id": "enumerate", "script": "enumerate.ps1", "args": {} },
  { "id": "find-recovery-checkpoints", "script": "find-recovery-checkpoints.ps1", "args": {} },
  { "id": "get-state-{vm.name}", "script": "get-state.ps1", "forEach": "vm", "args": { "VmId": "{vm.id}" } },
  { "id": "describe-{vm.name}", "script": "describe.ps1", "forEach": "vm", "args": { "VmId": "{vm.id}" } },
  { "id": "snapshot-crash", "script": "snapshot.ps1", "changes": true, "cleanup": "snapshot",
    "args": { "VmId": "{test.id}", "SnapshotName": "{R1}", "ConsistencyLevel": "Crash", "WaitSeconds": 120, "JobSeconds": 600 } },
  { "id": "check-snapshot", "script": "check-snapshot.ps1", "changes": true,
    "args": { "VmId": "{test.id}", "SnapshotId": "{snapshot-crash.Checkpoint.Id}", "Paths": "{snapshot-crash.Parents[].Path|}" } },
  { "id": "reference-point-convert-1", "script": "reference-point.ps1", "changes": true,
    "args": { "Action": "convert", "VmId": "{test.id}", "SnapshotId": "{snapshot-crash.Checkpoint.Id}", "RecordName": "{R1}", "JobSeconds": 600 } },
  { "id": "enumerate-test-vm", "script": "enumerate.ps1", "changes": true, "args": { "VmId": "{test.id}" } },
  { "id": "snapshot-application", "script": "snapshot.ps1", "changes": true, "cleanup": "snapshot",
    "args": { "VmId": "{test.id}", "SnapshotName": "{R2}", "ConsistencyLevel": "Application", "WaitSeconds": 120, "JobSeconds": 600 } },
  { "id": "rct-changes-{item.index}", "script": "rct-changes.ps1", "changes": true, "forEach": "snapshot-application.Parents[]",
    "args": { "Path": "{item.Path}", "VmId": "{test.id}", "RecordName": "{R1}", "JobSeconds": 600 } },
  { "id": "reference-point-convert-2", "script": "reference-point.ps1", "changes": true,
    "args": { "Action": "convert", "VmId": "{test.id}", "SnapshotId": "{snapshot-application.Checkpoint.Id}", "RecordName": "{R2}", "JobSeconds": 600 } },
  { "id": "snapshot-for-removal", "script": "snapshot.ps1", "changes": true, "cleanup": "snapshot",
    "args": { "VmId": "{test.id}", "SnapshotName": "{R3}", "ConsistencyLevel": "Crash", "WaitSeconds": 120, "JobSeconds": 600 } },
  { "id": "remove-checkpoint", "script": "remove-checkpoint.ps1", "changes": true,
    "args": { "VmId": "{test.id}", "CheckpointId": "{snapshot-for-removal.Checkpoint.Id}", "AllowRecoveryType": true, "WaitSeconds": 300 } },
  { "id": "save-vm", "script": "save-vm.ps1", "changes": true, "downtime": true, "args": { "VmId": "{test.id}" } },
  { "id": "get-state-saved", "script": "get-state.ps1", "changes": true, "downtime": true, "args": { "VmId": "{test.id}" } },
  { "id": "start-vm", "script": "start-vm.ps1", "changes": true, "downtime": true, "always": true, "args": { "VmId": "{test.id}" } },
  { "id": "reference-point-destroy", "script": "reference-point.ps1", "changes": true, "always": true,
    "args": { "Action": "destroy", "VmId": "{test.id}", "RecordNames": "{R1}|{R2}", "JobSeconds": 600 } },
  { "id": "find-recovery-checkpoints-after", "script": "find-recovery-checkpoints.ps1", "changes": true, "always": true, "args": {} }
]
'@ | ConvertFrom-Json

if (-not $ScriptsDir) { $ScriptsDir = Split-Path -Parent $PSScriptRoot }
if (-not $OutDir) { $OutDir = Join-Path (Get-Location) ('vmb-kit-' + $env:COMPUTERNAME + '-' + (Get-Date -Format 'yyyyMMddTHHmmss')) }
if ($TestVm -and -not $AllowChanges) { throw 'backing up a test VM changes it (snapshots, reference points): add -AllowChanges' }
$stamp = (Get-Date).ToUniversalTime().ToString('yyyyMMddTHHmmssZ')
$ctx = @{ R1 = "vmbackup-$stamp-kit001"; R2 = "vmbackup-$stamp-kit002"; R3 = "vmbackup-$stamp-kit003" }
$outputs = @{}

function Get-KitValue($Object, [string]$Path, [switch]$All) {
    # a.b.c, a.b[].c (every element), a suffix | joins the elements with |
    $join = $Path.EndsWith('|')
    $parts = $Path.TrimEnd('|').Split('.')
    $values = @($Object)
    foreach ($p in $parts) {
        $each = $p.EndsWith('[]')
        $name = $p.TrimEnd('[', ']')
        $next = @()
        foreach ($v in $values) {
            if ($null -eq $v) { continue }
            $x = $v.PSObject.Properties[$name]
            if ($null -eq $x -and $v -is [hashtable]) { $x = @{ Value = $v[$name] } }
            if ($null -eq $x) { continue }
            if ($each) { $next += @($x.Value) } else { $next += , $x.Value }
        }
        $values = $next
    }
    if ($join) { return ($values -join '|') }
    if ($All) { return $values }
    return $values[0]
}

function Resolve-KitText([string]$Text, $Vars) {
    return [regex]::Replace($Text, '\{([^{}]+)\}', {
        param($m)
        $ref = $m.Groups[1].Value
        $head = $ref.Split('.')[0].TrimEnd('[', ']')
        if ($Vars.ContainsKey($ref)) { return [string]$Vars[$ref] }
        if ($Vars.ContainsKey($head)) { return [string](Get-KitValue $Vars[$head] $ref.Substring($head.Length + 1)) }
        if ($outputs.ContainsKey($head)) { return [string](Get-KitValue $outputs[$head] $ref.Substring($head.Length + 1)) }
        if ($DryRun) { return $m.Value }
        throw "unresolved {$ref}"
    })
}

function Invoke-KitStep($Step, $Vars) {
    $id = (Resolve-KitText $Step.id $Vars) -replace '[^A-Za-z0-9._-]', '_'
    $stepArgs = [ordered]@{}
    foreach ($p in $Step.args.PSObject.Properties) {
        $v = $p.Value
        if ($v -is [string]) { $v = Resolve-KitText $v $Vars }
        $stepArgs[$p.Name] = $v
    }
    $json = ConvertTo-Json -InputObject $stepArgs -Compress
    Write-Host ("{0,-34} {1,-30} {2}" -f $id, $Step.script, $json)
    if ($DryRun) { return $null }
    $b64 = [Convert]::ToBase64String([Text.Encoding]::UTF8.GetBytes($json))
    $sw = [Diagnostics.Stopwatch]::StartNew()
    $errFile = Join-Path $OutDir "$id.stderr.txt"
    # Windows PowerShell 5.1 turns a native program's stderr lines into errors: with 'Stop' the
    # first one would end the kit instead of landing in the .stderr.txt file
    $eap = $ErrorActionPreference
    $ErrorActionPreference = 'Continue'
    try {
        $stdout = & powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -File (Join-Path $ScriptsDir $Step.script) -ArgsJson $b64 2> $errFile
        $code = $LASTEXITCODE
    } finally { $ErrorActionPreference = $eap }
    if ((Get-Item -LiteralPath $errFile).Length -eq 0) { Remove-Item -LiteralPath $errFile }
    $line = @($stdout | Where-Object { $_ -match '^\{"(result|error)"' })[-1]
    if ($line) { [IO.File]::WriteAllText((Join-Path $OutDir "$id.json"), $line + "`n") }
    $script:index += [ordered]@{ id = $id; script = $Step.script; args = $stepArgs; exitCode = $code; ms = $sw.ElapsedMilliseconds }
    if (-not $line) { throw "$id gave no JSON answer (exit code $code)" }
    $envelope = $line | ConvertFrom-Json
    if ($envelope.error) { throw ("$id failed: " + $envelope.error.message) }
    $outputs[$id] = $envelope.result
    return $envelope.result
}

if (-not $DryRun) { New-Item -ItemType Directory -Force -Path $OutDir | Out-Null }
$script:index = @()
$failure = $null
$snapshotNames = @()
foreach ($step in $KitSteps) {
    if ($step.changes -and -not $TestVm) { continue }
    if ($step.downtime -and -not $AllowDowntime) { continue }
    if ($failure -and -not $step.always) { continue }
    try {
        if ($step.forEach -eq 'vm') {
            $vms = @()
            if ($outputs.ContainsKey('enumerate')) { $vms = @($outputs['enumerate'].Vms | ForEach-Object { $_.VM }) }
            if ($DryRun) { $vms = @([pscustomobject]@{ Id = '<each VM id>'; Name = '<each VM>' }) }
            foreach ($vm in $vms) { Invoke-KitStep $step @{ vm = @{ id = [string]$vm.Id; name = [string]$vm.Name } } | Out-Null }
        } elseif ($step.forEach) {
            $items = @()
            if (-not $DryRun) { $items = @(Get-KitValue $outputs[$step.forEach.Split('.')[0]] ($step.forEach.Substring($step.forEach.IndexOf('.') + 1)) -All) } else { $items = @([pscustomobject]@{ Path = '<each disk>' }) }
            $i = 0
            foreach ($item in $items) { Invoke-KitStep $step (@{ item = $item; 'item.index' = $i } + $ctx + @{ test = $script:test }) | Out-Null; $i++ }
        } else {
            if ($step.changes -and -not $script:test) {
                $found = @($outputs['enumerate'].Vms | Where-Object { $_.VM.Name -eq $TestVm })
                if ($DryRun) { $found = @([pscustomobject]@{ VM = [pscustomobject]@{ Id = '<id of ' + $TestVm + '>' } }) }
                if ($found.Count -ne 1) { throw "test VM '$TestVm': $($found.Count) VMs of that name on this host" }
                $script:test = @{ id = [string]$found[0].VM.Id }
            }
            if ($step.cleanup -eq 'snapshot') { $snapshotNames += , @($step.id, (Resolve-KitText $step.args.SnapshotName $ctx)) }
            Invoke-KitStep $step ($ctx + @{ test = $script:test }) | Out-Null
        }
    } catch {
        $failure = $_
        Write-Warning ([string]$_.Exception.Message)
        # every snapshot the kit made is removed: by its Id when its step answered (a recovery
        # snapshot Hyper-V would not rename keeps its own name; one already converted is gone,
        # which the script reports as already removed), else by its name
        if ($script:test -and -not $DryRun) {
            foreach ($pair in $snapshotNames) {
                $made = $outputs[$pair[0]]
                $cleanupArgs = [pscustomobject]@{ VmId = $script:test.id; SnapshotName = $pair[1]; WaitSeconds = 120 }
                if ($made -and $made.Checkpoint -and $made.Checkpoint.Id) { $cleanupArgs = [pscustomobject]@{ VmId = $script:test.id; CheckpointId = [string]$made.Checkpoint.Id; AllowRecoveryType = $true; WaitSeconds = 120 } }
                try { Invoke-KitStep ([pscustomobject]@{ id = "cleanup-" + $pair[1]; script = 'remove-checkpoint.ps1'; args = $cleanupArgs }) @{} | Out-Null } catch { Write-Warning $_.Exception.Message }
            }
            $snapshotNames = @()
        }
    }
}
if (-not $DryRun) {
    [IO.File]::WriteAllText((Join-Path $OutDir 'steps.json'), (ConvertTo-Json -InputObject @($script:index) -Depth 5))
    Write-Host "fixtures written to $OutDir"
}
if ($failure) { exit 1 }
