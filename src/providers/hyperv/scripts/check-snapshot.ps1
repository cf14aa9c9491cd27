# Read-only, at the end of a copy: is the backup snapshot still there, on this node, and are the
# files copied out of it (its read-only parents) unchanged since it was made? A snapshot removed
# meanwhile would have been merged INTO the file being read.
# Args (ArgsJson): { VmId: guid, SnapshotId: guid, Paths: "<path>|<path>..." }
param([string]$ArgsJson)
. (Join-Path $PSScriptRoot 'common.ps1')

$out = $null
try {
    $a = Read-VmbArgs $ArgsJson
    $vmId = ConvertTo-VmbGuid (Get-VmbArg $a 'VmId')
    $snapshotId = ConvertTo-VmbGuid (Get-VmbArg $a 'SnapshotId')
    $paths = @(([string](Get-VmbArg $a 'Paths')).Split('|') | Where-Object { $_ })
    Assert-VmbNotMoved $vmId
    $vm = @(Hyper-V\Get-VM | Where-Object { $_.Id -eq $vmId })[0]
    $found = $null
    if ($null -ne $vm) { $found = @(Get-VmbCheckpoints $vm | Where-Object { [string]$_.Id -eq $snapshotId.ToString() })[0] }
    $stamps = New-Object System.Collections.Generic.List[object]
    foreach ($p in $paths) {
        try { $stamps.Add((Get-VmbFileStamp $p)) } catch { $stamps.Add([ordered]@{ Path = $p; Error = [string]$_.Exception.Message }) }
    }
    $out = [ordered]@{
        VmFound       = ($null -ne $vm)
        SnapshotFound = ($null -ne $found)
        SnapshotType  = $(if ($found) { [string]$found.SnapshotType } else { $null })
        Host          = [string]$env:COMPUTERNAME
        Parents       = @($stamps.ToArray())
    }
} catch {
    Write-VmbError $_
}
Write-VmbResult $out
