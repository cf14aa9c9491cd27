# Read-only: the checkpoints an interrupted backup may have left behind, on every VM of the host:
# ours (named vmbackup-*) and SnapshotType Recovery ones (made by VSS-based backup products).
# Args (ArgsJson): { VmId?: guid }  -- only that VM when given
param([string]$ArgsJson)
. (Join-Path $PSScriptRoot 'common.ps1')

$out = $null
try {
    $a = Read-VmbArgs $ArgsJson
    $only = Get-VmbArg $a 'VmId' -Optional
    if ($only) { $vms = @(Hyper-V\Get-VM -Id (ConvertTo-VmbGuid $only)) } else { $vms = @(Hyper-V\Get-VM) }
    $found = New-Object System.Collections.Generic.List[object]
    foreach ($vm in $vms) {
        if ($null -eq $vm) { continue }
        foreach ($cp in @(Get-VmbCheckpoints $vm)) {
            if (([string]$cp.Name) -cmatch '^vmbackup-' -or ([string]$cp.SnapshotType) -eq 'Recovery') {
                $found.Add((Get-VmbCheckpointInfo $cp))
            }
        }
    }
    $out = [ordered]@{ Checkpoints = @($found.ToArray()) }
} catch {
    Write-VmbError $_
}
Write-VmbResult $out
