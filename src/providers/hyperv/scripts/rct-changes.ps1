# Read-only: the ranges of a virtual disk changed since a Resilient Change Tracking id
# (Msvm_ImageManagementService.GetVirtualDiskChanges), asked of the backup snapshot's read-only
# parent, so the answer describes exactly the image being copied. The method may process less
# than asked (ProcessedByteLength) and its ByteLength must stay below the disk's size: asked in
# pieces until the whole disk is covered.
# Args (ArgsJson): { Path: "<parent .vhdx>", LimitId: "<RCT id>", Size: <virtual size>, JobSeconds?: int }
param([string]$ArgsJson)
. (Join-Path $PSScriptRoot 'common.ps1')

$out = $null
try {
    $a = Read-VmbArgs $ArgsJson
    $path = [string](Get-VmbArg $a 'Path')
    $limit = [string](Get-VmbArg $a 'LimitId')
    $size = [uint64](Get-VmbArg $a 'Size')
    $jobSeconds = [int](Get-VmbArg $a 'JobSeconds' -Optional)
    if ($jobSeconds -le 0) { $jobSeconds = 300 }
    $service = Get-VmbCimService 'Msvm_ImageManagementService'
    $offsets = New-Object System.Collections.Generic.List[uint64]
    $lengths = New-Object System.Collections.Generic.List[uint64]
    $piece = [uint64]64GB
    if ($size -le $piece) { $piece = [uint64][Math]::Max(1MB, $size - 1MB) }
    $at = [uint64]0
    $calls = 0
    while ($at -lt $size) {
        $len = [uint64][Math]::Min($piece, $size - $at)
        $r = Invoke-CimMethod -InputObject $service -MethodName 'GetVirtualDiskChanges' -Arguments @{
            Path = $path; LimitId = $limit; TargetSnapshotId = ''; ByteOffset = $at; ByteLength = $len
        }
        Wait-VmbCimResult $r 'GetVirtualDiskChanges' $jobSeconds | Out-Null
        $calls++
        foreach ($o in @($r.ChangedByteOffsets)) { if ($null -ne $o) { $offsets.Add([uint64]$o) } }
        foreach ($l in @($r.ChangedByteLengths)) { if ($null -ne $l) { $lengths.Add([uint64]$l) } }
        $done = [uint64]$r.ProcessedByteLength
        if ($done -eq 0) { throw (New-Object System.InvalidOperationException "GetVirtualDiskChanges processed nothing at offset $at") }
        $at += $done
    }
    $out = [ordered]@{ Path = $path; LimitId = $limit; Size = $size; Calls = $calls; ChangedByteOffsets = @($offsets.ToArray()); ChangedByteLengths = @($lengths.ToArray()) }
} catch {
    Write-VmbError $_
}
Write-VmbResult $out
